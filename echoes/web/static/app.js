/* echoes Browser: the small script behind the pages.
 *
 * No framework and no external file: the pages are server-rendered and work
 * without this script; it adds the live parts (push progress, queue refresh)
 * and the actions (push, AE edits, C-ECHO, retry, cancel) through the JSON API.
 * Data comes from data- attributes and the API (the Content-Security-Policy
 * allows no inline script); text goes into the page with textContent only.
 */
"use strict";

const csrfToken = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

async function api(method, url, body, poll) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (poll) options.headers["X-Echoes-Poll"] = "1";  // not activity: the session may expire
  if (method !== "GET") options.headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  let data = {};
  try { data = await response.json(); } catch (e) { data = {}; }
  if (response.status === 401) {
    window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error(data.error || "login required");
  }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function showMessage(text, kind) {
  const box = document.getElementById("message");
  if (!box) return;
  box.textContent = text;
  box.className = "message" + (kind ? " " + kind : "");
  box.hidden = !text;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

/* DOE^JANE^M -> "DOE, JANE M" (the alphabetic group), as the pages' person filter. */
function person(name) {
  const parts = (name || "").split("=")[0].split("^");
  const family = parts[0], rest = parts.slice(1).filter(Boolean).join(" ");
  return family && rest ? `${family}, ${rest}` : family || rest;
}

/* -- study page: push and its progress ------------------------------------------ */

function progressState(row) {
  const c = row.counts;
  if (!row.finished) return c.retrying ? "retrying" : "sending";
  if (c.failed) return "failed";
  if (c.cancelled && !c.done) return "cancelled";
  return "done";
}

function setupStudy() {
  const holder = document.getElementById("push-progress");
  if (!holder) return;
  const table = document.getElementById("push-progress-table");
  const url = holder.dataset.jobsUrl;
  let timer = null;

  async function poll() {
    timer = null;
    let progress;
    try {
      progress = await api("GET", url, undefined, true);
    } catch (error) {
      showMessage(error.message, "error");
      timer = setTimeout(poll, 3000);
      return;
    }
    const body = table.tBodies[0];
    body.replaceChildren(...progress.destinations.map((row) => {
      const state = progressState(row);
      return el("tr", { "data-testid": "progress-row", "data-destination": row.destination,
                        "data-state": state, "data-finished": String(row.finished) },
        el("td", { text: row.destination }),
        el("td", { class: "number", "data-testid": "progress-done", text: row.counts.done }),
        el("td", { class: "number", text: row.counts.pending }),
        el("td", { class: "number", text: row.counts.retrying }),
        el("td", { class: "number", "data-testid": "progress-failed", text: row.counts.failed }),
        el("td", { class: "number", text: row.counts.cancelled || 0 }),
        el("td", { class: "state-" + state, "data-testid": "progress-state", text: state }),
        el("td", { class: "error-text", text: row.last_error || "" }));
    }));
    table.hidden = progress.destinations.length === 0;
    holder.dataset.finished = String(progress.finished);
    if (!progress.finished) timer = setTimeout(poll, 1000);
  }

  const form = document.getElementById("push-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = document.getElementById("push-button");
      const ae = document.getElementById("push-ae").value;
      button.disabled = true;
      try {
        const result = await api("POST", form.dataset.pushUrl, { ae });
        showMessage(`Queued ${result.queued} objects for ${result.destination}.`, "ok");
        if (timer) clearTimeout(timer);
        poll();
      } catch (error) {
        showMessage(error.message, "error");
      } finally {
        button.disabled = false;
      }
    });
  }
  const remove = document.getElementById("delete-study");
  if (remove) {
    remove.addEventListener("click", async () => {
      if (!window.confirm("Delete this study, its files and index entries, for good?")) return;
      remove.disabled = true;
      try {
        await api("DELETE", remove.dataset.deleteUrl);
        window.location.assign(remove.dataset.studiesUrl);
      } catch (error) {
        showMessage(error.message, "error");
        remove.disabled = false;
      }
    });
  }
  poll();
}

/* -- forwarding list and AE map ---------------------------------------------------- */

function setupAes() {
  const table = document.getElementById("aes-table");
  const form = document.getElementById("ae-form");
  if (!table || !form) return;
  const base = table.dataset.api;
  const aeUrl = (title) => `${base}/${encodeURIComponent(title)}`;
  const field = (id) => document.getElementById(id);

  function resetForm() {
    form.reset();
    form.dataset.editing = "";
    field("ae-form-heading").textContent = "Add an AE";
    field("ae-save").textContent = "Add";
    field("ae-cancel").hidden = true;
  }

  table.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    const row = event.target.closest("tr[data-title]");
    if (!button || !row) return;
    const title = row.dataset.title;
    if (button.classList.contains("ae-edit")) {
      form.dataset.editing = title;
      field("ae-title").value = title;
      field("ae-host").value = row.dataset.host;
      field("ae-port").value = row.dataset.port;
      field("ae-forward").checked = row.dataset.forward === "true";
      field("ae-tls").checked = row.dataset.tls === "true";
      field("ae-modalities").value = row.dataset.modalities;
      field("ae-calling").value = row.dataset.calling;
      field("ae-study").checked = row.dataset.when === "study";
      field("ae-stable").value = row.dataset.stable;
      field("ae-form-heading").textContent = `Edit AE ${title}`;
      field("ae-save").textContent = "Save";
      field("ae-cancel").hidden = false;
      field("ae-host").focus();
    } else if (button.classList.contains("ae-remove")) {
      if (!window.confirm(`Remove AE ${title}? Jobs waiting for it stay in the queue.`)) return;
      try {
        await api("DELETE", aeUrl(title));
        window.location.reload();
      } catch (error) {
        showMessage(error.message, "error");
      }
    } else if (button.classList.contains("ae-echo")) {
      const result = row.querySelector(".echo-result");
      button.disabled = true;
      result.className = "echo-result";
      result.textContent = "…";
      try {
        const echo = await api("POST", `${aeUrl(title)}/echo`);
        result.className = "echo-result " + (echo.ok ? "ok" : "bad");
        result.dataset.ok = String(echo.ok);
        result.textContent = (echo.ok ? "✓ " : "✗ ") + echo.message;
      } catch (error) {
        result.className = "echo-result bad";
        result.dataset.ok = "false";
        result.textContent = error.message;
      } finally {
        button.disabled = false;
      }
    }
  });

  table.addEventListener("change", async (event) => {
    const box = event.target;
    if (!box.classList.contains("ae-forward")) return;
    const row = box.closest("tr[data-title]");
    try {
      await api("PUT", aeUrl(row.dataset.title), { forward: box.checked });
      row.dataset.forward = String(box.checked);
      box.nextElementSibling.textContent = box.checked ? " on" : " off";
      showMessage(`Forwarding to ${row.dataset.title} is ${box.checked ? "on" : "off"}.`, "ok");
    } catch (error) {
      box.checked = !box.checked;
      showMessage(error.message, "error");
    }
  });

  field("ae-cancel").addEventListener("click", resetForm);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      title: field("ae-title").value.trim(),
      host: field("ae-host").value.trim(),
      port: Number(field("ae-port").value),
      forward: field("ae-forward").checked,
      tls: field("ae-tls").checked,
      forward_modalities: field("ae-modalities").value.trim(),
      forward_calling_aes: field("ae-calling").value.trim(),
      forward_when: field("ae-study").checked ? "study" : "instance",
      stable_study_seconds: field("ae-stable").value.trim() || "60",
    };
    const editing = form.dataset.editing;
    try {
      if (editing) await api("PUT", aeUrl(editing), body);
      else await api("POST", base, body);
      window.location.reload();
    } catch (error) {
      showMessage(error.message, "error");
    }
  });
}

/* -- queue --------------------------------------------------------------------------- */

function setupQueue() {
  const filter = document.getElementById("queue-filter");
  if (!filter) return;
  const states = Array.from(document.querySelectorAll("#queue-destinations thead th")).slice(2)
    .map((th) => th.textContent);
  const retryFailed = document.getElementById("queue-retry-failed");
  let timer = null;

  /* The filter as URL parameters: the page's own URL shows the same view. */
  function filterParams() {
    const params = new URLSearchParams();
    const destination = document.getElementById("queue-destination").value;
    const state = document.getElementById("queue-state").value;
    if (destination) params.set("destination", destination);
    if (state) params.set("state", state);
    return params;
  }

  /* When a job last changed, worded by its state. */
  function jobTime(job) {
    if (job.state === "done") return "delivered " + when(job.delivered);
    if (job.state === "failed" || job.state === "cancelled") return `${job.state} ${when(job.updated)}`;
    return "next " + when(job.next_attempt);
  }

  function studyCell(job) {
    const name = person(job.patient_name);
    const known = Boolean(name || job.patient_id || job.accession);
    const details = [job.patient_id && `ID ${job.patient_id}`, job.accession && `Acc. ${job.accession}`]
      .filter(Boolean).join(" · ");
    return el("td", { class: "study" },
      el("a", { href: `/studies/${encodeURIComponent(job.study_instance_uid)}`,
                "data-testid": "job-study", title: job.study_instance_uid,
                class: known ? null : "uid",
                text: known ? name || "(no name)" : job.study_instance_uid }),
      details ? el("div", { class: "muted", "data-testid": "job-study-details", text: details }) : null);
  }

  async function refresh() {
    if (timer) clearTimeout(timer);
    timer = null;
    const params = filterParams();
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
    try {
      const queue = await api("GET", `${filter.dataset.api}?${params}`, undefined, true);
      render(queue);
      document.getElementById("queue-updated").textContent = new Date().toLocaleTimeString();
    } catch (error) {
      showMessage(error.message, "error");
    }
    if (document.getElementById("queue-autorefresh").checked) timer = setTimeout(refresh, 3000);
  }

  function render(queue) {
    const destinations = document.querySelector("#queue-destinations tbody");
    destinations.replaceChildren(...queue.destinations.map((row) =>
      el("tr", { "data-testid": "queue-destination-row", "data-destination": row.destination },
        el("td", { class: "title", text: row.destination }),
        el("td", { text: row.configured ? `${row.host}:${row.port}${row.forward ? " · forward" : ""}`
                                        : "not configured" }),
        ...states.map((s) => el("td", { class: "number state-" + (row.counts[s] ? s : ""),
                                        "data-state": s },
          el("a", { href: "?" + new URLSearchParams({ destination: row.destination, state: s }),
                    title: `${s} jobs to ${row.destination}`, text: row.counts[s] || 0 }))))));
    const failed = queue.destinations.reduce((sum, row) => sum + (row.counts.failed || 0), 0);
    retryFailed.disabled = failed === 0;
    retryFailed.dataset.failed = String(failed);
    retryFailed.textContent = failed ? `Retry ${failed} failed` : "Retry all failed";
    if (!queue.destinations.length) {
      destinations.append(el("tr", { class: "empty" },
        el("td", { colspan: String(2 + states.length), text: "No destinations and no jobs." })));
    }
    const jobs = document.querySelector("#queue-jobs tbody");
    jobs.replaceChildren(...queue.jobs.map((job) =>
      el("tr", { "data-testid": "job-row", "data-job-id": job.id, "data-state": job.state },
        el("td", { text: job.destination }),
        el("td", { class: "state-" + job.state, text: job.state }),
        el("td", { class: "number", text: job.attempts }),
        el("td", { class: "nowrap", "data-testid": "job-time", text: jobTime(job) }),
        el("td", { class: job.state === "done" ? "" : "error-text", text: job.last_error }),
        studyCell(job),
        el("td", { class: "actions" },
          ["failed", "retrying", "cancelled"].includes(job.state)
            ? el("button", { type: "button", class: "job-retry", "data-testid": "job-retry",
                             "data-job-id": job.id, text: "Retry" }) : null,
          ["pending", "retrying", "failed"].includes(job.state)
            ? el("button", { type: "button", class: "danger job-cancel", "data-testid": "job-cancel",
                             "data-job-id": job.id, text: "Cancel" }) : null))));
    if (!queue.jobs.length) {
      jobs.append(el("tr", { class: "empty" },
        el("td", { colspan: "7", "data-testid": "queue-no-jobs", text: "No jobs in this view." })));
    }
    const shown = queue.jobs.length;
    document.getElementById("queue-jobs-count").textContent =
      shown < queue.listed_total ? `${shown} of ${queue.listed_total}` : String(shown);
  }

  document.getElementById("queue-jobs").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-job-id]");
    if (!button) return;
    const action = button.classList.contains("job-retry") ? "retry" : "cancel";
    button.disabled = true;
    try {
      await api("POST", `/api/jobs/${encodeURIComponent(button.dataset.jobId)}/${action}`);
      showMessage(action === "retry" ? "Job queued again." : "Job cancelled.", "ok");
    } catch (error) {
      showMessage(error.message, "error");
    }
    refresh();
  });
  retryFailed.addEventListener("click", async () => {
    const destination = document.getElementById("queue-destination").value;
    retryFailed.disabled = true;
    try {
      const result = await api("POST", retryFailed.dataset.api, destination ? { destination } : {});
      showMessage(`${result.retried} failed ${result.retried === 1 ? "job" : "jobs"} queued again.`, "ok");
    } catch (error) {
      showMessage(error.message, "error");
    }
    refresh();
  });
  filter.addEventListener("change", refresh);
  filter.addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "study") setupStudy();
  else if (page === "aes") setupAes();
  else if (page === "queue") setupQueue();
});
