"""A client generated from the server's /openapi.json (openapi-python-client), driven through
every call against a live server by .ci/clients: each answer must parse into the generated
models, come back unchanged from their to_dict(), and carry no field that the models do not
declare (such a field would land in additional_properties, i.e. be missing from the document).

Usage: PYTHONPATH=<folder of async_engine_client> python clients_roundtrip.py BASE_URL
(the server with auth off, the default definitions, and notifications allowed to 127.0.0.1).
"""

import http.server
import json
import sys
import threading
import time

import attrs
from async_engine_client import Client
from async_engine_client.api.operations import get_health, get_readiness
from async_engine_client.api.processes import (
    cancel_async_process,
    list_async_processes,
    list_deliveries,
    list_process_definitions,
    retry_async_process,
    start_async_process,
)
from async_engine_client.api.status import (
    get_async_job_status,
    get_async_process_status,
    list_step_items,
)
from async_engine_client.api.tasks import (
    claim_tasks,
    complete_task,
    extend_task_lease,
    fail_task,
)
from async_engine_client.models import (
    ActionBody,
    ClaimBody,
    CompleteBody,
    FailBody,
    HeartbeatBody,
    IdType,
    Outcome,
    StartBody,
    StatusName,
)

CHECKED = []


def declared_only(value, where):
    """Every model in `value` holds its JSON in declared fields; free-form objects (no declared
    fields: additionalData, an item) may hold anything."""
    if isinstance(value, list):
        for n, element in enumerate(value):
            declared_only(element, f"{where}[{n}]")
        return
    if not attrs.has(type(value)):
        return
    fields = [f.name for f in attrs.fields(type(value)) if f.name != "additional_properties"]
    extra = getattr(value, "additional_properties", {})
    if fields and extra:
        raise AssertionError(
            f"{where}: {type(value).__name__} does not declare {sorted(extra)}: the document lacks them"
        )
    for name in fields:
        declared_only(getattr(value, name), f"{where}.{name}")


def check(what, response, status):
    """The answer has `status`, parses, and round-trips field for field."""
    raw = json.loads(response.content)
    if response.status_code != status:
        raise AssertionError(f"{what}: {response.status_code} {raw}")
    parsed = response.parsed
    if parsed is None:
        raise AssertionError(f"{what}: the client could not parse {raw}")
    declared_only(parsed, what)
    again = parsed.to_dict()
    if again != raw:
        raise AssertionError(f"{what}: the client's model gives back\n{again}\nfor\n{raw}")
    CHECKED.append(what)
    return raw, parsed


def wait_for(what, read, done, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value} after {seconds} s")
        time.sleep(0.1)


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def main(base):
    client = Client(base_url=base, raise_on_unexpected_status=True, timeout=60)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    check("getHealth", get_health.sync_detailed(client=client), 200)
    check("getReadiness", get_readiness.sync_detailed(client=client), 200)
    raw, _ = check("listProcessDefinitions", list_process_definitions.sync_detailed(client=client), 200)
    names = [d["name"] for d in raw["processDefinitions"]]
    assert {"Bulk CPQ", "External Pricing"} <= set(names), names

    # Bulk CPQ: Validate fails two items with codes and messages, Price fails one; it finishes
    # and notifies the receiver.
    items = [
        {"productCode": "TV", "quantity": 2},
        {"productCode": "TV"},
        {"productCode": "DISCONTINUED-DSL", "quantity": 1},
        {"productCode": "TV", "quantity": 500},
        "AnyItem",
    ]
    start = StartBody.from_dict(
        {
            "asyncProcessName": "Bulk CPQ",
            "referenceId": "roundtrip-1",
            "items": items,
            "additionalData": {"nested": {"list": [1, 2.5, None, True]}, "text": "x"},
            "callbackUrl": callback,
        }
    )
    raw, _ = check(
        "startAsyncProcess",
        start_async_process.sync_detailed(client=client, body=start, idempotency_key="roundtrip-1"),
        202,
    )
    bulk = raw["AsyncProcessStatus"][0]["asyncProcessId"]

    def status(**shape):
        return get_async_process_status.sync_detailed(bulk, client=client, **shape)

    wait_for(
        "Bulk CPQ",
        lambda: json.loads(status(verbose=False).content)["AsyncProcessStatus"][0]["status"],
        lambda s: s in ("Success", "Failed", "Aborted"),
    )
    raw, _ = check("getAsyncProcessStatus", status(), 202)
    steps = raw["AsyncProcessStatus"][0]["itemsProcessed"]
    assert any(group.get("statusMessage") for step in steps for group in step["failed"]), steps
    check("getAsyncProcessStatus verbose=false", status(verbose=False, id_type=IdType.ASYNCPROCESSID), 202)
    check("getAsyncProcessStatus itemsList=false", status(items_list=False, fail_message=False), 202)
    check(
        "getAsyncProcessStatus by referenceId",
        get_async_process_status.sync_detailed("roundtrip-1", client=client, id_type=IdType.REFERENCEID),
        202,
    )
    check(
        "getAsyncJobStatus",
        get_async_job_status.sync_detailed(
            client=client, body=ActionBody.from_dict({"asyncProcessId": bulk})
        ),
        202,
    )
    raw, parsed = check(
        "getAsyncProcessStatus of no such process",
        get_async_process_status.sync_detailed("no-such-process", client=client),
        400,
    )
    assert raw["technicalMessage"] and parsed.technical_message == raw["technicalMessage"], raw

    # The items call: failures keep their code and statusMessage through the client.
    raw, parsed = check(
        "listStepItems failed",
        list_step_items.sync_detailed(bulk, 0, client=client, outcome=Outcome.FAILED),
        200,
    )
    assert raw["items"] and all("code" in i and "statusMessage" in i for i in raw["items"]), raw
    assert all(isinstance(i.code, int) and isinstance(i.status_message, str) for i in parsed.items), parsed
    raw, _ = check("listStepItems page", list_step_items.sync_detailed(bulk, 0, client=client, limit=1), 200)
    assert raw["nextCursor"], raw
    check(
        "listStepItems next page",
        list_step_items.sync_detailed(bulk, 0, client=client, limit=1, cursor=raw["nextCursor"]),
        200,
    )
    check(
        "listStepItems successful",
        list_step_items.sync_detailed(bulk, 1, client=client, outcome=Outcome.SUCCESSFUL),
        200,
    )

    raw, _ = wait_for(
        "the notification",
        lambda: check("listDeliveries", list_deliveries.sync_detailed(bulk, client=client), 200),
        lambda answer: answer[0]["deliveries"] and answer[0]["deliveries"][0]["state"] == "delivered",
    )
    assert raw["deliveries"][0]["deliveredAt"], raw

    # External workers: claim, heartbeat, complete with a failure, and fail a task.
    def start_priced(reference):
        body = StartBody.from_dict(
            {
                "asyncProcessName": "External Pricing",
                "referenceId": reference,
                "items": [{"productCode": "TV", "quantity": n} for n in (1, 2, 3)],
            }
        )
        raw, _ = check("startAsyncProcess", start_async_process.sync_detailed(client=client, body=body), 202)
        return raw["AsyncProcessStatus"][0]["asyncProcessId"]

    def claim():
        body = ClaimBody.from_dict(
            {"queue": "pricing", "workerId": "roundtrip", "maxTasks": 1, "waitSeconds": 10}
        )
        raw, parsed = check("claimTasks", claim_tasks.sync_detailed(client=client, body=body), 200)
        assert len(parsed.tasks) == 1, raw
        return raw["tasks"][0]

    priced = start_priced("roundtrip-2")
    task = claim()
    assert task["asyncProcessId"] == priced and task["items"], task
    check(
        "extendTaskLease",
        extend_task_lease.sync_detailed(
            task["taskId"], client=client, body=HeartbeatBody.from_dict({"leaseToken": task["leaseToken"]})
        ),
        200,
    )
    indexes = [i["index"] for i in task["items"]]
    report = CompleteBody.from_dict(
        {
            "leaseToken": task["leaseToken"],
            "successfully": indexes[1:],
            "failed": [{"items": indexes[:1], "code": 7001, "statusMessage": "No price"}],
        }
    )
    raw, _ = check(
        "completeTask", complete_task.sync_detailed(task["taskId"], client=client, body=report), 200
    )
    assert raw["recorded"] == len(indexes), raw
    raw, _ = check(
        "listStepItems of a worker's failure",
        list_step_items.sync_detailed(priced, 1, client=client, outcome=Outcome.FAILED),
        200,
    )
    assert [(i["code"], i["statusMessage"]) for i in raw["items"]] == [(7001, "No price")], raw
    raw, _ = check(
        "completeTask again",
        complete_task.sync_detailed(task["taskId"], client=client, body=report),
        409,
    )

    failing = start_priced("roundtrip-3")
    task = claim()
    assert task["asyncProcessId"] == failing, task
    body = FailBody.from_dict({"leaseToken": task["leaseToken"], "statusMessage": "Pricing is down"})
    check("failTask", fail_task.sync_detailed(task["taskId"], client=client, body=body), 200)
    wait_for(
        "the failed task's process",
        lambda: json.loads(
            get_async_process_status.sync_detailed(failing, client=client, verbose=False).content
        )["AsyncProcessStatus"][0]["status"],
        lambda s: s == "Failed",
    )
    check("retryAsyncProcess", retry_async_process.sync_detailed(failing, client=client), 202)
    check("cancelAsyncProcess", cancel_async_process.sync_detailed(failing, client=client), 202)
    raw, parsed = check(
        "cancelAsyncProcess again",
        cancel_async_process.sync_detailed(failing, client=client),
        409,
    )
    assert "already finished" in parsed.technical_message, raw

    raw, _ = check("listAsyncProcesses", list_async_processes.sync_detailed(client=client, limit=2), 202)
    assert len(raw["AsyncProcessStatus"]) == 2 and raw["nextCursor"], raw
    check(
        "listAsyncProcesses next page",
        list_async_processes.sync_detailed(client=client, limit=2, cursor=raw["nextCursor"]),
        202,
    )
    check(
        "listAsyncProcesses by status",
        list_async_processes.sync_detailed(
            client=client, status=StatusName.ABORTED, reference_id="roundtrip-3"
        ),
        202,
    )
    receiver.shutdown()
    print(f"clients: {len(CHECKED)} answers round-tripped through the generated client")


if __name__ == "__main__":
    main(sys.argv[1])
