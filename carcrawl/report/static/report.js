// Spot-check marks: click "right" / "wrong" on a card (click again to clear), then "save marks"
// downloads marks.json for `carcrawl review import marks.json`. Marks survive a reload
// (localStorage, per report); window.carcrawlMarks holds the current state.
(function () {
  "use strict";
  var reportId = document.body.dataset.report;
  var storeKey = "carcrawl-marks:" + reportId;
  var marks = {};
  var stored = null;
  try { stored = JSON.parse(window.localStorage.getItem(storeKey) || "null"); } catch (e) { stored = null; }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card[data-sha]"));
  cards.forEach(function (card) {
    if (card.dataset.mark) { marks[card.dataset.sha] = card.dataset.mark; }  // already imported
  });
  if (stored && typeof stored === "object") {
    Object.keys(stored).forEach(function (sha) { marks[sha] = stored[sha]; });
  }
  window.carcrawlMarks = marks;

  function persist() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(marks)); } catch (e) { /* private mode */ }
  }
  function render(card) {
    var m = marks[card.dataset.sha];
    card.classList.toggle("right", m === "right");
    card.classList.toggle("wrong", m === "wrong");
  }
  function updateCount() {
    var n = 0, r = 0, w = 0;
    Object.keys(marks).forEach(function (sha) {
      if (marks[sha] === "right") { r++; n++; } else if (marks[sha] === "wrong") { w++; n++; }
    });
    document.getElementById("mark-count").textContent = n + " marked (" + r + " right, " + w + " wrong)";
  }
  cards.forEach(function (card) {
    card.querySelectorAll("button[data-mark]").forEach(function (button) {
      button.addEventListener("click", function () {
        var sha = card.dataset.sha, mark = button.dataset.mark;
        marks[sha] = marks[sha] === mark ? "none" : mark;  // "none" clears an imported mark too
        persist(); render(card); updateCount();
      });
    });
    render(card);
  });
  updateCount();

  window.carcrawlMarksJSON = function () {
    return JSON.stringify({ format: "carcrawl-marks", version: 1, report: reportId,
                            saved_at: new Date().toISOString(), marks: marks }, null, 1);
  };
  document.getElementById("save-marks").addEventListener("click", function () {
    var blob = new Blob([window.carcrawlMarksJSON()], { type: "application/json" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "marks.json";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });
  document.getElementById("clear-marks").addEventListener("click", function () {
    Object.keys(marks).forEach(function (sha) { marks[sha] = "none"; });
    persist(); cards.forEach(render); updateCount();
  });
})();
