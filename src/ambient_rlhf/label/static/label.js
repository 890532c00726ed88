// ambient label: the page's only script.  Every text from the server goes into the page
// with textContent (never parsed as HTML).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token");
  const KEY = "ambient-label-name";
  let labeller = localStorage.getItem(KEY);
  let item = null;          // the item on screen
  let submission = null;    // its submission id: a retry after an error resends the same one
  let busy = false;

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function api(path, body) {
    const headers = {};
    if (token) headers["X-Label-Token"] = token;
    const opts = { headers, cache: "no-store" };
    if (body !== undefined) {
      opts.method = "POST";
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(data.error || ("HTTP " + r.status)), { status: r.status });
    return data;
  }

  function status(msg) { $("status").textContent = msg || ""; }

  function showProgress(p) {
    $("progress").textContent = p.done + " / " + p.total + " judged";
  }

  function show(section) {
    for (const s of ["login", "task", "done"]) $(s).hidden = s !== section;
  }

  async function load() {
    busy = true;
    try {
      const d = await api("api/next?labeller=" + encodeURIComponent(labeller));
      showProgress(d.progress);
      item = d.item;
      if (!item) { show("done"); return; }
      submission = newId();
      $("prompt").textContent = item.prompt;
      $("left").textContent = item.left;
      $("right").textContent = item.right;
      $("note").value = "";
      $("task").dataset.item = item.item_id;
      show("task");
      status("");
    } catch (e) {
      status("could not load the next item (" + e.message + "); reload the page to retry");
    } finally {
      busy = false;
    }
  }

  async function pick(choice) {
    if (busy || !item) return;
    busy = true;
    try {
      await api("api/judge", { labeller, item_id: item.item_id, choice, note: $("note").value,
                               submission_id: submission });
    } catch (e) {
      busy = false;
      if (e.status === 409) { status(e.message); await load(); return; }
      status("not saved (" + e.message + "); press again to retry");
      return;
    }
    busy = false;
    await load();
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const d = await api("api/undo", { labeller });
      busy = false;
      status(d.undone ? "undone" : "nothing to undo");
      await load();
    } catch (e) {
      busy = false;
      status("undo failed (" + e.message + ")");
    }
  }

  function start(name) {
    // the name field is about to be hidden: give its focus back now, or the first shortcut
    // key can still land in the (hidden) input and be ignored as typing
    $("name").blur();
    labeller = name;
    localStorage.setItem(KEY, name);
    $("who").textContent = "labeller: " + name;
    $("switch").hidden = false;
    load();
  }

  $("start").addEventListener("click", () => {
    const n = $("name").value.trim();
    if (!/^[A-Za-z0-9_.-][A-Za-z0-9 _.-]{0,39}$/.test(n)) {
      status("a name of 1-40 letters, digits, spaces, _ . -");
      return;
    }
    start(n);
  });
  $("name").addEventListener("keydown", (e) => { if (e.key === "Enter") $("start").click(); });
  $("switch").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    location.reload();
  });
  // a clicked button gives its focus back, so a later Space or Enter does not press it again
  const button = (id, fn) => $(id).addEventListener("click", (e) => { e.currentTarget.blur(); fn(); });
  button("pick-left", () => pick("left"));
  button("pick-right", () => pick("right"));
  button("pick-tie", () => pick("tie"));
  button("pick-skip", () => pick("skip"));
  button("undo", undo);
  $("note").addEventListener("keydown", (e) => { if (e.key === "Escape") $("note").blur(); });

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA") || e.ctrlKey || e.metaKey || e.altKey) return;
    if (!labeller) return;
    const k = e.key.toLowerCase();
    const act = { a: "left", arrowleft: "left", 1: "left", b: "right", arrowright: "right", 2: "right",
                  t: "tie", 3: "tie", s: "skip", 0: "skip" }[k];
    if (act) { e.preventDefault(); pick(act); }
    else if (k === "u") { e.preventDefault(); undo(); }
    else if (k === "n") { e.preventDefault(); $("note").focus(); }
  });

  if (labeller) start(labeller);
  else show("login");
})();
