// Sanhak job page: draws the loss and validation curves and the log from the
// events already on the page, then follows the job live over Server-Sent
// Events. A lost connection resumes after the last event seen (the browser
// sends Last-Event-ID); when the job ends the page reloads to show the grade.
(function () {
  'use strict';
  var box = document.getElementById('job');
  if (!box) return;
  var jobId = box.dataset.job;
  var LABELS = { queued: 'Queued', leased: 'Starting', running: 'Training', grading: 'Grading', done: 'Graded',
    failed: 'Failed', not_gradable: 'Not gradable', cancelled: 'Cancelled' };
  var steps = [], evals = [], logLines = [], lastSeq = parseInt(box.dataset.lastSeq, 10);
  var totalSteps = null, metricName = null, dirty = false;
  var logEl = document.getElementById('log');
  var evalBody = document.querySelector('#evals tbody');
  var SVG = 'http://www.w3.org/2000/svg';

  function log(line) {
    logLines.push(line);
    if (logLines.length > 400) logLines.splice(0, logLines.length - 400);
    dirty = true;
  }
  function fmt(x) {
    if (!isFinite(x)) return String(x);
    var a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(2) : String(Number(x.toPrecision(4)));
  }

  // One stored or streamed event.
  function handle(kind, data) {
    if (kind === 'log') { log(typeof data === 'string' ? data : JSON.stringify(data)); return; }
    if (kind === 'compile') {
      log(data && data.ok ? 'compiled' : 'compile failed (see the compiler messages below)');
      return;
    }
    if (kind !== 'event' || !data) return;
    switch (data.event) {
      case 'started':
        totalSteps = data.total_steps;
        log('started: ' + data.program + ', ' + data.total_steps + ' steps, ' + data.trainable_params + ' trainable parameters, seed ' + data.seed);
        break;
      case 'step':
        steps.push([data.step, data.loss]);
        if (data.step % 10 === 0 || data.step === 1) log('step ' + data.step + '  loss ' + fmt(data.loss) + '  lr ' + fmt(data.lr));
        break;
      case 'eval':
        var names = Object.keys(data.metrics || {});
        if (!metricName) metricName = names.indexOf('accuracy') >= 0 ? 'accuracy' : names.filter(function (n) { return n !== 'loss'; })[0] || names[0];
        evals.push([data.step, data.metrics[metricName]]);
        var row = document.createElement('tr');
        var td1 = document.createElement('td'); td1.textContent = data.step;
        var td2 = document.createElement('td');
        td2.textContent = names.map(function (n) { return n + ' ' + fmt(data.metrics[n]); }).join(' · ');
        row.appendChild(td1); row.appendChild(td2); evalBody.appendChild(row);
        log('eval at step ' + data.step + ': ' + td2.textContent);
        break;
      case 'early_stop':
        log('early stop at step ' + data.step + ', keeping step ' + data.best_step + ' (' + fmt(data.best_metric) + ')');
        break;
      case 'checkpoint':
        log('checkpoint ' + data.path + ' (' + data.bytes + ' bytes)');
        break;
      case 'log':
        log(data.message);
        break;
      case 'finished':
        log('finished: ' + data.steps + ' steps in ' + fmt(data.elapsed_s) + ' s');
        break;
    }
    dirty = true;
  }

  // A line chart of [x, y] points into an <svg viewBox="0 0 480 220">.
  function lineChart(svg, points, xMax, label) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 480, H = 220, L = 52, R = 10, T = 10, B = 28;
    var pts = points.filter(function (p) { return isFinite(p[1]); });
    function el(name, attrs, text) {
      var e = document.createElementNS(SVG, name);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    }
    el('rect', { x: L, y: T, width: W - L - R, height: H - T - B, class: 'plot' });
    if (!pts.length) {
      el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, 'waiting for ' + label + '…');
      return;
    }
    var x1 = Math.max(xMax || 0, pts[pts.length - 1][0], 1);
    var ys = pts.map(function (p) { return p[1]; });
    var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    if (hi === lo) { hi += Math.abs(hi) * 0.05 + 1e-6; lo -= Math.abs(lo) * 0.05 + 1e-6; }
    function sx(x) { return L + (W - L - R) * x / x1; }
    function sy(y) { return T + (H - T - B) * (1 - (y - lo) / (hi - lo)); }
    [lo, (lo + hi) / 2, hi].forEach(function (y) {
      el('line', { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: 'grid' });
      el('text', { x: L - 4, y: sy(y) + 4, 'text-anchor': 'end' }, fmt(y));
    });
    el('text', { x: L, y: H - 8 }, '0');
    el('text', { x: W - R, y: H - 8, 'text-anchor': 'end' }, 'step ' + x1);
    el('polyline', {
      class: 'series',
      points: pts.map(function (p) { return sx(p[0]).toFixed(1) + ',' + sy(p[1]).toFixed(1); }).join(' ')
    });
    var last = pts[pts.length - 1];
    el('circle', { cx: sx(last[0]), cy: sy(last[1]), r: 3, class: 'last' });
    svg.setAttribute('data-points', String(pts.length));
  }

  function draw() {
    if (!dirty) return;
    dirty = false;
    lineChart(document.getElementById('loss-chart'), steps, totalSteps, 'the first step');
    lineChart(document.getElementById('eval-chart'), evals, totalSteps, 'the first evaluation');
    document.getElementById('eval-name').textContent = metricName || '';
    document.getElementById('curve-note').textContent = steps.length ? '(step ' + steps[steps.length - 1][0] + (totalSteps ? ' of ' + totalSteps : '') + ')' : '';
    var atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
    logEl.textContent = logLines.join('\n');
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
  }
  function schedule() { window.requestAnimationFrame(draw); }

  function setState(s) {
    var el = document.getElementById('state');
    el.textContent = LABELS[s.state] || s.state;
    el.className = 'state state-' + s.state;
    box.dataset.state = s.state;
    var q = document.getElementById('queue-position');
    if (s.state === 'queued' && s.queue_position !== null && s.queue_position !== undefined) {
      q.textContent = s.queue_position === 0 ? 'next in the queue' : s.queue_position + ' job(s) ahead in the queue';
    } else {
      q.textContent = '';
    }
  }

  JSON.parse(document.getElementById('events').textContent).forEach(function (e) { handle(e.kind, e.data); });
  dirty = true;
  draw();

  if (box.dataset.final === 'true' || !window.EventSource) return;
  var source = new EventSource('/jobs/' + encodeURIComponent(jobId) + '/stream?after=' + lastSeq);
  ['event', 'log', 'compile'].forEach(function (kind) {
    source.addEventListener(kind, function (m) {
      var data;
      try { data = JSON.parse(m.data); } catch (err) { data = m.data; }
      handle(kind, data);
      schedule();
    });
  });
  source.addEventListener('state', function (m) {
    try { setState(JSON.parse(m.data)); } catch (err) { /* ignore a malformed state */ }
  });
  source.addEventListener('end', function (m) {
    source.close();
    setState({ state: m.data });
    // The grade and the final report are rendered by the server.
    window.setTimeout(function () { window.location.reload(); }, 300);
  });
})();
