// Live progress for a job page: listens to the job's server-sent events (the same stream as
// GET /v1/jobs/{id}/events, through the session cookie) and updates the progress bar, the status, the message
// and each entry's progress. Text only (textContent): names are user input. When the job ends the page is
// reloaded once, to show the final table. Without JavaScript the page is complete, only not live.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var terminal = ["succeeded", "failed", "cancelled"];
  if (terminal.indexOf(live.dataset.status) >= 0) return;
  var updates = 0;
  var source = new EventSource(live.dataset.events);

  function apply(data) {
    updates += 1;
    live.dataset.updates = String(updates);
    live.dataset.status = data.status;
    document.getElementById("progress-bar").value = data.progress;
    document.getElementById("progress-value").textContent = (data.progress * 100).toFixed(1) + " %";
    var badge = document.querySelector("#job-status .status");
    if (badge) {
      badge.textContent = data.status;
      badge.className = "status " + data.status;
    }
    document.getElementById("job-message").textContent = data.message || "";
    var rows = document.querySelectorAll("tr.entry");
    (data.entries || []).forEach(function (entry) {
      rows.forEach(function (row) {
        if (row.dataset.name !== entry.name) return;
        var cell = row.querySelector(".entry-progress");
        if (cell) cell.textContent = Math.round(entry.progress * 100) + " % (" + entry.status + ")";
      });
    });
  }

  source.addEventListener("progress", function (event) {
    apply(JSON.parse(event.data));
  });
  source.addEventListener("end", function (event) {
    apply(JSON.parse(event.data));
    source.close();
    window.location.reload();
  });
})();
