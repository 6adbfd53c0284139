// The dashboard's script, compiled into the binary and served as /assets/dashboard.js (pages
// allow no inline script).
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
