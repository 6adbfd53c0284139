// The dashboard's script, compiled into the binary and served as /assets/dashboard.js (pages
// allow no inline script).
// Pages with data-refresh (the list, the queues) fetch themselves again every so many seconds
// while shown, and swap in their tables; never while a form field has the focus.
(() => {
  const main = document.querySelector("main");
  const seconds = Number(main.dataset.refresh);
  if (!seconds || !window.fetch || !window.DOMParser) return;
  const refresh = async () => {
    if (document.visibilityState !== "visible" || document.activeElement?.closest("form")) return;
    const answer = await fetch(location.href, { credentials: "same-origin" });
    if (!answer.ok) return clearInterval(timer);
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    for (const old of main.querySelectorAll("[id]")) {
      const replacement = fresh.getElementById(old.id);
      if (replacement && !old.closest("form")) old.replaceWith(replacement);
    }
  };
  const timer = setInterval(() => refresh().catch(() => {}), seconds * 1000);
})();

// Live progress from the event stream while the process runs; a final state reloads the page
// once, for the failure groups.
(() => {
  const main = document.querySelector("main");
  if (main.dataset.running !== "true" || !window.EventSource) return;
  const url = "/v1/asyncprocesses/" + encodeURIComponent(main.dataset.processId) + "/events?idType=asyncProcessId";
  const source = new EventSource(url);
  source.addEventListener("status", (event) => {
    const record = JSON.parse(event.data).AsyncProcessStatus[0];
    const status = document.getElementById("status");
    status.textContent = record.status;
    status.className = "status " + record.status;
    document.getElementById("message").textContent = record.message;
    for (const step of record.itemsProcessed || []) {
      const bar = document.getElementById("bar-" + step.stepNumber);
      if (!bar) continue;
      bar.max = Math.max(step.totalNumberOfItemsToBeProccessed, 1);
      bar.value = step.currentNumberOfItemsProccessed;
      document.getElementById("count-" + step.stepNumber).textContent =
        step.currentNumberOfItemsProccessed + " / " + step.totalNumberOfItemsToBeProccessed;
      const label = document.getElementById("step-status-" + step.stepNumber);
      label.textContent = step.status;
      label.className = "status " + step.status;
    }
    if (["Success", "Failed", "Aborted"].includes(record.status)) {
      source.close();
      setTimeout(() => location.reload(), 800);
    }
  });
})();
