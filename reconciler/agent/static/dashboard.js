// The dashboard's one script. The pages are whole without it; with it, the agent's events arrive as they are
// said (server-sent events from /events) and the page's data is fetched again when the agent took a new board.
"use strict";
(function () {
  if (!window.EventSource) { return; }
  var live = function () { return document.getElementById("live"); };
  var text = function (tag, value) { var el = document.createElement(tag); el.textContent = value; return el; };
  var refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var page = new DOMParser().parseFromString(html, "text/html");
        var keep = live() ? live().innerHTML : null;
        ["agent", "main"].forEach(function (id) {
          var fresh = page.getElementById(id), old = document.getElementById(id);
          if (fresh && old && !old.contains(document.activeElement)) { old.innerHTML = fresh.innerHTML; }
        });
        ["suspended", "refused"].forEach(function (id) {
          var fresh = page.getElementById(id), old = document.getElementById(id);
          if (old && !fresh) { old.remove(); }
          else if (fresh && old) { old.innerHTML = fresh.innerHTML; }
          else if (fresh && !old) { document.getElementById("main").before(document.importNode(fresh, true)); }
        });
        if (keep !== null && live()) { live().innerHTML = keep; }
      })
      .catch(function () {})
      .then(function () { refreshing = false; if (again) { again = false; refresh(); } });
  }
  var source = new EventSource("/events");
  source.addEventListener("open", function () { document.body.dataset.live = "on"; });
  source.addEventListener("error", function () { document.body.dataset.live = "off"; });
  source.addEventListener("agent", function (message) {
    var item = JSON.parse(message.data), list = live();
    if (!list) { return; }
    var li = document.createElement("li");
    li.dataset.event = item.event; li.dataset.app = item.app;
    li.append(text("time", item.time), " ", text("code", item.event), " ", item.message);
    list.prepend(li);
    while (list.children.length > 100) { list.lastElementChild.remove(); }
  });
  source.addEventListener("board", refresh);
})();
