// Party dashboard: refresh the page every data-refresh seconds (0: never) unless the user is
// typing in a form, and ask before a destructive action. No dependencies, no build step.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (seconds > 0) {
    setInterval(function () {
      var active = document.activeElement;
      var typing = active && (active.tagName === "INPUT" || active.tagName === "SELECT");
      if (!typing && document.visibilityState === "visible") {
        window.location.reload();
      }
    }, seconds * 1000);
  }
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
})();
