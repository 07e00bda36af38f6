// The Meters list follows a sync in flight: polls its progress until it is done or failed.
(function () {
  "use strict";
  const POLL_MS = 1000;

  function follow(status) {
    fetch(status.dataset.url, { credentials: "same-origin" })
      .then((response) => response.json())
      .then((progress) => {
        status.dataset.state = progress.state;
        status.textContent = progress.message + " ";
        if (progress.state === "done" || progress.state === "failed") {
          const reload = document.createElement("a");
          reload.href = window.location.pathname;
          reload.id = "sync-reload";
          reload.textContent = "Show the meters";
          status.appendChild(reload);
        } else {
          setTimeout(() => follow(status), POLL_MS);
        }
      })
      .catch(() => setTimeout(() => follow(status), POLL_MS * 5));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const status = document.getElementById("sync-status");
    if (status && status.dataset.url) follow(status);
  });
})();
