// Live progress of a run: poll its JSON every 2 s while it is active, redraw the rounds and
// failures, announce changes to screen readers, reload once it ends (to show its result and
// report). No framework; text only through textContent (never innerHTML).
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root || root.dataset.active !== "true") return;
  var key = root.dataset.key;
  var lastDone = -1;
  function cell(row, text, tag) {
    var c = document.createElement(tag || "td");
    c.textContent = text;
    row.appendChild(c);
    return c;
  }
  function draw(run) {
    document.getElementById("run-state").textContent = run.state;
    var id = document.getElementById("run-id");
    if (run.run_id) id.textContent = run.run_id + (run.superlink_status ? " (" + run.superlink_status + ")" : "");
    var body = document.getElementById("rounds");
    body.replaceChildren();
    run.rounds.forEach(function (r, i) {
      var tr = document.createElement("tr");
      cell(tr, String(i + 1)).className = "num";
      cell(tr, r.round, "th").scope = "row";
      cell(tr, r.ops.join(", "));
      cell(tr, r.state);
      cell(tr, r.sites.join(", "));
      cell(tr, r.seconds == null ? "" : r.seconds.toFixed(1)).className = "num";
      body.appendChild(tr);
    });
    document.getElementById("rounds-count").textContent = "(" + run.rounds_done + " done)";
    var fails = document.getElementById("failures");
    if (run.failures.length) {
      fails.replaceChildren();
      run.failures.forEach(function (f) {
        var li = document.createElement("li");
        li.className = "notice bad";
        li.textContent = f.kind + (f.site ? " — site " + f.site : "") + (f.round ? ", round " + f.round : "") + ": " + f.message;
        fails.appendChild(li);
      });
    }
    if (run.rounds_done !== lastDone) {
      lastDone = run.rounds_done;
      document.getElementById("live").textContent = run.rounds_done + " rounds done, state " + run.state;
    }
  }
  function poll() {
    fetch("/api/runs/" + encodeURIComponent(key), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (r.status === 401) { window.location.href = "/login"; } return r.json(); })
      .then(function (run) {
        draw(run);
        if (run.active) { setTimeout(poll, 2000); } else { window.location.reload(); }
      })
      .catch(function () { setTimeout(poll, 4000); });
  }
  setTimeout(poll, 1000);
})();
