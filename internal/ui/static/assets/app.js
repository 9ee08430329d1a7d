// Updates page of the Quantix-OS host UI.
//
// It talks only to the agent that served it: the REST routes under
// /api/v1/updates and the server-sent event stream. The page's
// Content-Security-Policy forbids inline code, so everything lives here and
// all text goes into the DOM through textContent, never as HTML.
(function () {
  'use strict';

  var API = '/api/v1/updates';
  var LABELS = {
    idle: 'Idle',
    checking: 'Checking...',
    up_to_date: 'Up to Date',
    available: 'Update Available',
    downloading: 'Downloading...',
    applying: 'Applying...',
    complete: 'Complete',
    error: 'Error',
    reboot_required: 'Reboot Required'
  };
  var HINTS = {
    idle: 'Check for updates to see whether a newer release is available.',
    checking: 'Asking the update server for the newest release on this channel.',
    up_to_date: 'This host runs the newest release of its channel.',
    available: 'A newer release is available for this host.',
    downloading: 'Downloading and verifying the release.',
    applying: 'Installing the release.',
    complete: 'The update is installed.',
    error: '',
    reboot_required: 'The update takes effect at the next reboot.'
  };
  var RESULTS = { completed: 'Completed', failed: 'Failed', rolled_back: 'Rolled back', cancelled: 'Cancelled' };
  var BUSY = { checking: true, downloading: true, applying: true };
  var TOKEN_KEY = 'qx-update-token';
  var POLL_MS = 2000;
  var STREAM_RETRY_MS = 30000;

  var state = {
    status: 'idle',
    message: '',
    progress: null, // {pct, done, total, component}
    check: null,    // the last GET /check answer while it is current
    operationId: '', // the operation the last event or status was about
    pending: false, // a request of this page is in flight
    actionMessage: ''
  };

  function $(id) { return document.getElementById(id); }
  function setText(id, text) { $(id).textContent = text; }

  // ---- formatting ----

  function fmtBytes(n) {
    if (typeof n !== 'number' || !isFinite(n) || n < 0) { return '—'; }
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }

  // fmtDuration shortens Go's "1h0m0s" to "1h"; Go parses both.
  function fmtDuration(s) {
    return String(s || '').replace(/([hm])0s$/, '$1').replace(/h0m$/, 'h');
  }

  // sentence capitalizes the engine's messages ("version 0.0.6 installed").
  function sentence(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
  }

  function fmtTime(s) {
    var d = new Date(s);
    return isNaN(d.getTime()) || d.getFullYear() < 2000 ? '—' : d.toLocaleString();
  }

  // ---- requests ----

  function ApiError(status, code, message) {
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.message = message;
  }
  ApiError.prototype = Object.create(Error.prototype);

  // api sends a request and returns the decoded JSON answer. A POST or PUT
  // that gets 401 asks for the API token and is sent again with it.
  async function api(method, path, body) {
    for (;;) {
      var headers = { Accept: 'application/json' };
      var token = sessionStorage.getItem(TOKEN_KEY);
      if (token && method !== 'GET') { headers.Authorization = 'Bearer ' + token; }
      var init = { method: method, headers: headers, cache: 'no-store', credentials: 'same-origin' };
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }
      var resp;
      try {
        resp = await fetch(path, init);
      } catch (e) {
        throw new ApiError(0, 'network', 'The agent cannot be reached: ' + e.message);
      }
      var data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (resp.ok) { return data; }
      var err = data && data.error ? data.error : { code: 'http_' + resp.status, message: 'HTTP ' + resp.status };
      if (resp.status === 401 && method !== 'GET') {
        if (token) { sessionStorage.removeItem(TOKEN_KEY); }
        var why = token ? 'That token was not accepted. Enter the update agent\'s API token.'
          : 'Changes on this host need the update agent\'s API token.';
        if (await askToken(why)) { continue; }
        throw new ApiError(401, err.code, 'An API token is needed to make changes on this host.');
      }
      throw new ApiError(resp.status, err.code, err.message);
    }
  }

  // ---- token prompt ----

  var tokenPrompt = null;

  // askToken shows the token dialog and resolves true once a token is
  // stored in sessionStorage, false when the user cancels.
  function askToken(why) {
    if (tokenPrompt) { return tokenPrompt; }
    var dialog = $('token-dialog');
    var input = $('token-input');
    setText('token-why', why);
    input.value = '';
    tokenPrompt = new Promise(function (resolve) {
      function done(ok) {
        $('token-form').removeEventListener('submit', onSubmit);
        $('token-cancel').removeEventListener('click', onCancel);
        dialog.removeEventListener('cancel', onCancel);
        if (dialog.open) { dialog.close(); }
        tokenPrompt = null;
        resolve(ok);
      }
      function onSubmit(e) {
        e.preventDefault();
        var t = input.value.trim();
        if (!t) { input.focus(); return; }
        sessionStorage.setItem(TOKEN_KEY, t);
        done(true);
      }
      function onCancel(e) { e.preventDefault(); done(false); }
      $('token-form').addEventListener('submit', onSubmit);
      $('token-cancel').addEventListener('click', onCancel);
      dialog.addEventListener('cancel', onCancel);
    });
    dialog.showModal();
    input.focus();
    return tokenPrompt;
  }

  // ---- rendering ----

  function render() {
    var s = state.status;
    var badge = $('status-badge');
    badge.textContent = LABELS[s] || s;
    badge.dataset.status = s;
    setText('status-message', s === 'error' ? '' : sentence(state.message || HINTS[s] || ''));

    var busy = !!BUSY[s] || state.pending;
    var offer = state.check && state.check.available;
    $('check-btn').disabled = busy;
    $('apply-btn').disabled = busy || !offer || (s !== 'available' && s !== 'error');
    $('cancel-btn').hidden = !(s === 'downloading' || s === 'applying');
    $('cancel-btn').disabled = state.pending;

    var am = $('action-message');
    am.textContent = state.actionMessage;
    am.hidden = !state.actionMessage;

    renderProgress(s);

    $('error-panel').hidden = s !== 'error';
    setText('error-message', state.message || 'The update failed.');
    $('reboot-panel').hidden = s !== 'reboot_required';
    if (s === 'reboot_required' && state.message) { setText('reboot-message', state.message); }

    renderAvailable(s);
  }

  function renderProgress(s) {
    var panel = $('progress-panel');
    var bar = $('progress');
    var fill = $('progress-fill');
    panel.hidden = !(s === 'downloading' || s === 'applying');
    if (panel.hidden) { return; }
    setText('progress-label', LABELS[s]);
    var p = state.progress;
    if (p && typeof p.pct === 'number') {
      var pct = Math.max(0, Math.min(100, Math.round(p.pct)));
      fill.classList.remove('indeterminate');
      fill.style.width = pct + '%';
      bar.setAttribute('aria-valuenow', String(pct));
      bar.setAttribute('aria-valuetext', pct + '%');
      var detail = pct + '%';
      if (p.total > 0) { detail += ' · ' + fmtBytes(p.done) + ' of ' + fmtBytes(p.total); }
      if (p.component) { detail += ' · ' + p.component; }
      setText('progress-text', detail);
    } else if (s === 'downloading') {
      fill.classList.remove('indeterminate');
      fill.style.width = '0%';
      bar.setAttribute('aria-valuenow', '0');
      bar.setAttribute('aria-valuetext', 'starting');
      setText('progress-text', 'Starting…');
    } else {
      // Installing has no byte count: an indeterminate bar has no value.
      fill.classList.add('indeterminate');
      bar.removeAttribute('aria-valuenow');
      bar.setAttribute('aria-valuetext', 'installing');
      setText('progress-text', state.message || '');
    }
  }

  function renderAvailable(s) {
    var c = state.check;
    var show = !!(c && c.available) && s !== 'complete' && s !== 'up_to_date';
    $('available').hidden = !show;
    if (!show) { return; }
    var comps = c.components || [];
    setText('available-version', c.availableVersion || c.latestVersion || '—');
    setText('download-size', fmtBytes(c.totalDownloadSize));
    setText('component-count', String(comps.length) + (c.fullImageAvailable ? ' + system image' : ''));
    var body = $('components-body');
    body.textContent = '';
    comps.forEach(function (u) {
      var tr = document.createElement('tr');
      [u.name, u.currentVersion || 'not installed', u.newVersion, fmtBytes(u.sizeBytes)].forEach(function (v, i) {
        var td = document.createElement('td');
        td.textContent = v;
        if (i === 3) { td.className = 'num'; }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    setText('release-notes', c.releaseNotes || 'No release notes.');
  }

  function renderVersions(osVersion, comps) {
    comps = comps || {};
    setText('ver-os', osVersion || '—');
    setText('ver-qx-node', comps['qx-node'] || '—');
    setText('ver-qx-console', comps['qx-console'] || '—');
    setText('ver-host-ui', comps['host-ui'] || '—');
  }

  function renderHistory(entries) {
    var body = $('history-body');
    body.textContent = '';
    if (!entries || entries.length === 0) {
      var tr = document.createElement('tr');
      var td = document.createElement('td');
      td.colSpan = 5;
      td.className = 'muted';
      td.textContent = 'No updates yet.';
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    entries.forEach(function (e) {
      var tr = document.createElement('tr');
      function cell(text, cls) {
        var td = document.createElement('td');
        td.textContent = text;
        if (cls) { td.className = cls; }
        tr.appendChild(td);
        return td;
      }
      cell(fmtTime(e.finishedAt));
      cell((e.fromVersion ? e.fromVersion + ' → ' : '') + (e.version || '—'));
      cell(e.kind === 'full' ? 'System image' : 'Components');
      var badge = document.createElement('span');
      badge.className = 'badge';
      badge.dataset.status = e.result;
      badge.textContent = RESULTS[e.result] || e.result;
      cell('').appendChild(badge);
      cell(e.error || (e.components || []).join(', '), 'details');
      body.appendChild(tr);
    });
  }

  function setConn(mode) {
    var el = $('conn');
    el.dataset.mode = mode;
    el.textContent = mode === 'live' ? 'Live updates'
      : mode === 'polling' ? 'Live updates unavailable; refreshing every 2 s' : 'Connecting…';
  }

  // ---- state changes ----

  function setStatus(status, message, progress) {
    var prev = state.status;
    // A progress event carries no message: keep the step's own.
    if (status === prev && !message && progress !== undefined) { message = state.message; }
    state.status = status;
    state.message = message || '';
    if (progress !== undefined) { state.progress = progress; }
    if (status === 'complete' || status === 'up_to_date') { state.check = null; }
    if (BUSY[prev] && !BUSY[status]) { settled(); }
    render();
  }

  // settled reloads what an ended operation changed.
  function settled() {
    loadCurrent();
    loadHistory();
  }

  function progressOf(p) {
    if (!p) { return null; }
    return { pct: p.percentage, done: p.downloadedBytes, total: p.totalBytes, component: p.currentComponent };
  }

  // onStatus takes a StatusReport (the stream's first event, or a poll).
  function onStatus(r) {
    if (!r || !r.status) { return; }
    if (r.nodeId) { setText('node-id', r.nodeId); }
    if (r.versions) { renderVersions(r.versions.os, r.versions.components); }
    state.operationId = r.operationId || '';
    setStatus(r.status, r.message, progressOf(r.progress));
    if (r.status === 'available' && !state.check && !state.pending) { check(true); }
  }

  // onEvent takes an UpdateEvent of the stream.
  function onEvent(ev) {
    if (!ev || !ev.status) { return; }
    state.operationId = ev.operationId || '';
    var progress = null;
    if (ev.type === 'progress') {
      progress = { pct: ev.progress, done: ev.bytesDone, total: ev.bytesTotal, component: ev.component };
    }
    setStatus(ev.status, ev.message, progress);
    if (ev.type === 'completed' || ev.type === 'failed' || ev.type === 'rolled_back' || ev.type === 'cancelled') {
      settled();
    }
  }

  // ---- loading ----

  async function loadCurrent() {
    try {
      var c = await api('GET', API + '/current');
      renderVersions(c.osVersion, c.components);
    } catch (e) { /* the status shows what is wrong */ }
  }

  async function loadStatus() {
    try {
      onStatus(await api('GET', API + '/status'));
    } catch (e) {
      setStatus('error', e.message, null);
    }
  }

  async function loadHistory() {
    try {
      var h = await api('GET', API + '/history');
      renderHistory(h.history);
    } catch (e) { /* keep the table as it is */ }
  }

  async function loadSettings() {
    try {
      fillSettings(await api('GET', API + '/config'));
    } catch (e) {
      settingsResult('error', 'Settings could not be read: ' + e.message);
    }
  }

  function fillSettings(s) {
    $('set-server').value = s.serverUrl || '';
    $('set-channel').value = s.channel || '';
    $('set-autocheck').checked = !!s.autoCheck;
    $('set-interval').value = fmtDuration(s.checkInterval);
  }

  function settingsResult(kind, text) {
    var el = $('settings-result');
    el.dataset.kind = kind;
    el.textContent = text;
  }

  // ---- actions ----

  // check asks the agent for the newest release. quiet: fill in the details
  // of an update the status already says is available, without the spinner.
  async function check(quiet) {
    state.pending = true;
    state.actionMessage = '';
    if (!quiet) { setStatus('checking', '', null); } else { render(); }
    try {
      var r = await api('GET', API + '/check?refresh=true');
      state.check = r;
      state.pending = false;
      if (r.available) {
        setStatus('available', 'Version ' + (r.availableVersion || r.latestVersion) + ' is available on channel ' + r.channel + '.', null);
      } else {
        setStatus('up_to_date', 'Quantix-OS ' + r.currentVersion + ' is the newest release on channel ' + r.channel + '.', null);
      }
    } catch (e) {
      state.check = null;
      state.pending = false;
      setStatus('error', e.message, null);
    }
  }

  async function apply() {
    var version = state.check && (state.check.availableVersion || state.check.latestVersion);
    state.pending = true;
    state.actionMessage = '';
    render();
    try {
      var r = await api('POST', API + '/apply', version ? { version: version } : {});
      state.pending = false;
      // The stream may have told how the operation went before this answer
      // came (a small update can end first); otherwise show its start.
      if (!r || r.operationId !== state.operationId) {
        setStatus('downloading', 'Update to ' + (version || 'the newest release') + ' started.', null);
      } else {
        render();
      }
    } catch (e) {
      state.pending = false;
      state.actionMessage = e.message;
      render();
    }
  }

  async function cancel() {
    state.pending = true;
    render();
    try {
      await api('POST', API + '/cancel', {});
      state.actionMessage = '';
    } catch (e) {
      state.actionMessage = e.message;
    }
    state.pending = false;
    render();
  }

  async function saveSettings(e) {
    e.preventDefault();
    var btn = $('save-settings');
    btn.disabled = true;
    settingsResult('', 'Saving…');
    try {
      var s = await api('PUT', API + '/config', {
        channel: $('set-channel').value.trim(),
        autoCheck: $('set-autocheck').checked,
        checkInterval: $('set-interval').value.trim()
      });
      fillSettings(s);
      settingsResult('ok', 'Settings saved.');
    } catch (err) {
      settingsResult('error', err.message);
    }
    btn.disabled = false;
  }

  // ---- live status: the event stream, else polling ----

  var stream = null;
  var pollTimer = null;
  var retryTimer = null;

  function startPolling() {
    setConn('polling');
    if (pollTimer) { return; }
    pollTimer = setInterval(loadStatus, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    retryTimer = null;
    if (!window.EventSource) { startPolling(); return; }
    var es = new EventSource(API + '/events');
    stream = es;
    es.addEventListener('open', function () { stopPolling(); setConn('live'); });
    es.addEventListener('status', function (m) { onStatus(parse(m.data)); });
    es.addEventListener('update', function (m) { onEvent(parse(m.data)); });
    es.addEventListener('error', function () {
      // The browser retries a dropped stream by itself (CONNECTING); a
      // refused one is CLOSED and is tried again later. Poll meanwhile.
      startPolling();
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        if (stream === es) { stream = null; }
        if (!retryTimer) { retryTimer = setTimeout(connect, STREAM_RETRY_MS); }
      }
    });
  }

  function parse(s) {
    try { return JSON.parse(s); } catch (e) { return null; }
  }

  // ---- start ----

  function init() {
    $('check-btn').addEventListener('click', function () { check(false); });
    $('apply-btn').addEventListener('click', apply);
    $('cancel-btn').addEventListener('click', cancel);
    $('settings-form').addEventListener('submit', saveSettings);
    render();
    loadCurrent();
    loadStatus();
    loadSettings();
    loadHistory();
    connect();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
}());
