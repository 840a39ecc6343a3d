// Sanhak lab page. Recipe labs: the form and its raw TOML view stay in
// sync, and both are checked with the lab's schema by the same rules the
// server applies (the server checks again; its messages land in the same
// places). Code labs: a plain editor with line numbers, Tab indentation and
// Ctrl/Cmd+Enter to submit. Without JavaScript the TOML or code textarea
// still submits.
(function () {
  'use strict';
  var form = document.getElementById('submit-form');
  if (!form) return;
  if (form.dataset.kind === 'recipe') recipe(form); else editor(form);

  // ---- TOML: the subset a recipe uses (key = value, strings, numbers,
  // booleans, arrays of strings, comments). Returns {values, order, error}.
  function parseToml(text) {
    var values = {}, order = [];
    var lines = text.split(/\r?\n/);
    for (var i = 0; i < lines.length; i++) {
      var line = stripComment(lines[i]).trim();
      if (!line) continue;
      var n = i + 1;
      if (line.charAt(0) === '[') return { error: 'line ' + n + ': tables are not part of a recipe' };
      var eq = line.indexOf('=');
      if (eq < 0) return { error: 'line ' + n + ': expected key = value' };
      var key = line.slice(0, eq).trim();
      var raw = line.slice(eq + 1).trim();
      if (!/^[A-Za-z0-9_-]+$/.test(key)) return { error: 'line ' + n + ': invalid key ' + JSON.stringify(key) };
      // An array may continue over several lines.
      while (raw.charAt(0) === '[' && depth(raw) > 0 && i + 1 < lines.length) {
        i++;
        raw += ' ' + stripComment(lines[i]).trim();
      }
      var v = parseValue(raw);
      if (v.error) return { error: 'line ' + n + ': ' + v.error };
      if (Object.prototype.hasOwnProperty.call(values, key)) return { error: 'line ' + n + ': duplicate key ' + key };
      values[key] = v.value;
      order.push(key);
    }
    return { values: values, order: order };
  }
  function depth(s) {
    var d = 0, inStr = false;
    for (var i = 0; i < s.length; i++) {
      var c = s.charAt(i);
      if (c === '"' && s.charAt(i - 1) !== '\\') inStr = !inStr;
      else if (!inStr && c === '[') d++;
      else if (!inStr && c === ']') d--;
    }
    return d;
  }
  function stripComment(line) {
    var inStr = false, q = '';
    for (var i = 0; i < line.length; i++) {
      var c = line.charAt(i);
      if (inStr) { if (c === q && line.charAt(i - 1) !== '\\') inStr = false; }
      else if (c === '"' || c === "'") { inStr = true; q = c; }
      else if (c === '#') return line.slice(0, i);
    }
    return line;
  }
  function parseValue(raw) {
    if (raw === 'true') return { value: true };
    if (raw === 'false') return { value: false };
    if (/^"(?:[^"\\]|\\.)*"$/.test(raw)) {
      try { return { value: JSON.parse(raw) }; } catch (e) { return { error: 'invalid string' }; }
    }
    if (/^'[^']*'$/.test(raw)) return { value: raw.slice(1, -1) };
    if (raw.charAt(0) === '[') {
      if (raw.charAt(raw.length - 1) !== ']') return { error: 'unclosed array' };
      var inner = raw.slice(1, -1).trim();
      if (!inner) return { value: [] };
      var items = [], parts = inner.split(',');
      for (var i = 0; i < parts.length; i++) {
        var p = parts[i].trim();
        if (!p && i === parts.length - 1) continue;
        var v = parseValue(p);
        if (v.error) return v;
        items.push(v.value);
      }
      return { value: items };
    }
    var num = raw.replace(/_/g, '');
    if (/^[+-]?\d+$/.test(num)) return { value: { int: parseInt(num, 10) } };
    if (/^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(num)) return { value: parseFloat(num) };
    if (/^[+-]?(inf|nan)$/.test(num)) return { value: num.indexOf('nan') >= 0 ? NaN : (num.charAt(0) === '-' ? -Infinity : Infinity) };
    return { error: 'cannot read the value ' + raw };
  }
  function typeName(v) {
    if (v && typeof v === 'object' && 'int' in v) return 'integer';
    if (typeof v === 'number') return 'float';
    if (typeof v === 'boolean') return 'boolean';
    if (typeof v === 'string') return 'string';
    if (Array.isArray(v)) return 'array';
    return 'value';
  }
  function num(v) { return (v && typeof v === 'object' && 'int' in v) ? v.int : v; }

  // ---- The schema's checks, with the server's wording.
  function checkValue(p, v) {
    var t = typeName(v);
    switch (p.type) {
      case 'float':
        if (t !== 'float' && t !== 'integer') return 'expected a number, found ' + t;
        var x = num(v);
        if (!isFinite(x)) return 'expected a finite number, found ' + x;
        if (x < p.min || x > p.max) return 'expected a number between ' + p.min + ' and ' + p.max + ', found ' + x;
        return null;
      case 'int':
        if (t !== 'integer') return 'expected an integer, found ' + t;
        if (v.int < p.min || v.int > p.max) return 'expected an integer between ' + p.min + ' and ' + p.max + ', found ' + v.int;
        return null;
      case 'bool':
        return t === 'boolean' ? null : 'expected true or false, found ' + t;
      case 'choice':
        if (t !== 'string' || p.choices.indexOf(v) < 0) return 'expected one of ' + JSON.stringify(p.choices) + ', found ' + (t === 'string' ? JSON.stringify(v) : t);
        return null;
      case 'multi':
        if (t !== 'array') return 'expected a list drawn from ' + JSON.stringify(p.choices) + ', found ' + t;
        for (var i = 0; i < v.length; i++) {
          if (typeof v[i] !== 'string' || p.choices.indexOf(v[i]) < 0) return 'expected a list drawn from ' + JSON.stringify(p.choices) + ', found ' + JSON.stringify(v[i]);
        }
        return null;
    }
    return null;
  }
  function validate(params, values) {
    var errors = {}, byName = {};
    params.forEach(function (p) { byName[p.name] = p; });
    Object.keys(values).forEach(function (k) {
      var p = byName[k];
      if (!p) { errors[''] = (errors[''] ? errors[''] + '; ' : '') + k + ': unknown parameter; this lab accepts ' + JSON.stringify(params.map(function (q) { return q.name; })); return; }
      var e = checkValue(p, values[k]);
      if (e) errors[k] = e;
    });
    if ('steps' in values && 'epochs' in values) errors.epochs = 'give either steps or epochs, not both';
    var w = values.warmup_steps, s = values.steps;
    if (w && s && typeName(w) === 'integer' && typeName(s) === 'integer' && w.int > s.int && !errors.warmup_steps) {
      errors.warmup_steps = 'expected at most steps (' + s.int + '), found ' + w.int;
    }
    return errors;
  }

  function recipe(form) {
    var schema = JSON.parse(document.getElementById('schema').textContent);
    var params = schema.param || [];
    var toml = document.getElementById('recipe-toml');
    var tomlError = document.getElementById('toml-error');
    var general = document.getElementById('form-error');
    var tabs = form.querySelector('.tabs');
    var formPane = document.getElementById('recipe-form');
    var rawPane = document.getElementById('raw-pane');
    var tabForm = document.getElementById('tab-form');
    var tabToml = document.getElementById('tab-toml');
    tabs.hidden = false;

    function show(which) {
      var isForm = which === 'form';
      tabForm.setAttribute('aria-selected', String(isForm));
      tabToml.setAttribute('aria-selected', String(!isForm));
      formPane.hidden = !isForm;
      rawPane.hidden = isForm;
    }
    tabForm.addEventListener('click', function () {
      if (fromToml()) show('form');
    });
    tabToml.addEventListener('click', function () { show('toml'); });

    function box(name) { return form.querySelector('.param[data-param="' + name + '"]'); }
    function input(name) { return document.getElementById('p-' + name); }
    function lengthChoice() {
      var r = form.querySelector('input[name="length"]:checked');
      return r ? r.value : null;
    }
    function active(p) {
      var c = lengthChoice();
      if (!c) return true;
      if (p.name === 'steps') return c === 'steps';
      if (p.name === 'epochs') return c === 'epochs';
      return true;
    }
    // The value of a field, typed like the TOML parser's values.
    function read(p) {
      var el = input(p.name);
      switch (p.type) {
        case 'bool': return el.checked;
        case 'choice': return el.value;
        case 'multi':
          return Array.prototype.filter.call(el.querySelectorAll('input[type=checkbox]'), function (c) { return c.checked; })
            .map(function (c) { return c.value; });
        case 'int':
          var s = el.value.trim();
          if (/^[+-]?\d+$/.test(s)) return { int: parseInt(s, 10) };
          return s === '' ? NaN : parseFloat(s);
        default:
          return el.value.trim() === '' ? NaN : parseFloat(el.value);
      }
    }
    function write(p, v) {
      var el = input(p.name);
      switch (p.type) {
        case 'bool': el.checked = v === true; break;
        case 'choice': el.value = v; break;
        case 'multi':
          Array.prototype.forEach.call(el.querySelectorAll('input[type=checkbox]'), function (c) {
            c.checked = Array.isArray(v) && v.indexOf(c.value) >= 0;
          });
          break;
        default:
          el.value = String(num(v));
          syncSlider(p);
      }
    }
    function defaultOf(p) {
      return p.type === 'int' ? { int: p.default } : p.default;
    }
    function formatValue(p, v) {
      if (p.type === 'multi') return '[' + v.map(function (s) { return JSON.stringify(s); }).join(', ') + ']';
      if (p.type === 'choice') return JSON.stringify(v);
      if (p.type === 'bool') return String(v);
      var x = num(v);
      if (p.type === 'float' && Number.isInteger(x) && Math.abs(x) < 1e15) return x.toFixed(1);
      return String(x);
    }
    function formValues() {
      var values = {};
      params.forEach(function (p) { if (active(p)) values[p.name] = read(p); });
      return values;
    }
    function showErrors(errors) {
      params.forEach(function (p) {
        var b = box(p.name), e = document.getElementById('err-' + p.name);
        if (!b || !e) return;
        var msg = errors[p.name] || '';
        e.textContent = msg;
        b.classList.toggle('has-error', !!msg);
        var el = input(p.name);
        if (el && el.tagName !== 'FIELDSET') {
          if (msg) el.setAttribute('aria-invalid', 'true'); else el.removeAttribute('aria-invalid');
        }
      });
      if (general) general.hidden = true;
      // In the raw view the fields are out of sight: list their errors there too.
      var lines = errors[''] ? [errors['']] : [];
      if (formPane.hidden) {
        params.forEach(function (p) { if (errors[p.name]) lines.push(p.name + ': ' + errors[p.name]); });
      }
      tomlError.textContent = lines.join('\n');
    }
    // Form → TOML.
    function toToml() {
      var values = formValues();
      var out = ['# Made with the form on the lab page.'];
      params.forEach(function (p) {
        if (p.name in values) out.push(p.name + ' = ' + formatValue(p, values[p.name]));
      });
      toml.value = out.join('\n') + '\n';
      var errors = validate(params, values);
      // NaN from an empty or unreadable number field.
      params.forEach(function (p) {
        var v = values[p.name];
        if (typeof v === 'number' && isNaN(v) && !errors[p.name]) errors[p.name] = 'enter a number';
      });
      showErrors(errors);
      return Object.keys(errors).length === 0;
    }
    // TOML → form; false when the TOML cannot be read (the error shows).
    function fromToml() {
      var parsed = parseToml(toml.value);
      if (parsed.error) {
        tomlError.textContent = parsed.error;
        return false;
      }
      var values = parsed.values;
      var choice = form.querySelector('input[name="length"][value="' + ('epochs' in values && !('steps' in values) ? 'epochs' : 'steps') + '"]');
      if (choice) { choice.checked = true; applyLength(); }
      params.forEach(function (p) {
        var v = p.name in values ? values[p.name] : defaultOf(p);
        if (checkValue(p, v) === null || p.type === 'float' || p.type === 'int') write(p, v);
      });
      var errors = validate(params, values);
      showErrors(errors);
      return true;
    }
    function applyLength() {
      ['steps', 'epochs'].forEach(function (n) {
        var b = box(n);
        if (b) b.hidden = lengthChoice() !== null && lengthChoice() !== n;
      });
    }
    function syncSlider(p) {
      var el = input(p.name), slider = document.getElementById('p-' + p.name + '-range');
      if (!slider) return;
      var x = parseFloat(el.value);
      if (!isFinite(x)) return;
      slider.value = slider.dataset.log === 'true' ? Math.log10(Math.max(x, p.min)) : x;
    }
    params.forEach(function (p) {
      var slider = document.getElementById('p-' + p.name + '-range');
      if (slider) {
        slider.addEventListener('input', function () {
          var v = parseFloat(slider.value);
          if (slider.dataset.log === 'true') v = Number(Math.pow(10, v).toPrecision(3));
          if (p.type === 'int') v = Math.round(v);
          input(p.name).value = String(v);
          toToml();
        });
      }
      var el = input(p.name);
      if (!el) return;
      el.addEventListener(p.type === 'multi' || p.type === 'bool' || p.type === 'choice' ? 'change' : 'input', function () {
        if (p.type === 'float' || p.type === 'int') syncSlider(p);
        toToml();
      });
    });
    Array.prototype.forEach.call(form.querySelectorAll('input[name="length"]'), function (r) {
      r.addEventListener('change', function () { applyLength(); toToml(); });
    });
    toml.addEventListener('input', function () { tomlError.textContent = ''; fromToml(); });
    form.addEventListener('submit', function (ev) {
      var ok;
      if (!formPane.hidden) ok = toToml();
      else {
        var parsed = parseToml(toml.value);
        if (parsed.error) { tomlError.textContent = parsed.error; ok = false; }
        else { var errors = validate(params, parsed.values); showErrors(errors); ok = Object.keys(errors).length === 0; }
      }
      if (!ok) {
        ev.preventDefault();
        var first = form.querySelector('.has-error input, .has-error select');
        if (first && !formPane.hidden) first.focus(); else if (formPane.hidden) toml.focus();
      }
    });
    // Start on the form when the TOML reads; otherwise on the raw view with its error.
    var parsed = parseToml(toml.value);
    if (parsed.error) { show('toml'); tomlError.textContent = parsed.error; }
    else show('form');
  }

  function editor(form) {
    var code = document.getElementById('code');
    var gutter = document.getElementById('gutter');
    var INDENT = '    ';
    function numbers() {
      var n = code.value.split('\n').length, out = '';
      for (var i = 1; i <= n; i++) out += i + '\n';
      gutter.textContent = out;
    }
    code.addEventListener('input', numbers);
    code.addEventListener('scroll', function () { gutter.scrollTop = code.scrollTop; });
    code.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        if (form.requestSubmit) form.requestSubmit(); else form.submit();
        return;
      }
      if (e.key !== 'Tab') return;
      e.preventDefault();
      var v = code.value, s = code.selectionStart, end = code.selectionEnd;
      var lineStart = v.lastIndexOf('\n', s - 1) + 1;
      if (e.shiftKey) {
        var line = v.slice(lineStart);
        var m = /^ {1,4}/.exec(line);
        if (m) {
          code.value = v.slice(0, lineStart) + v.slice(lineStart + m[0].length);
          code.selectionStart = code.selectionEnd = Math.max(lineStart, s - m[0].length);
        }
      } else if (s !== end && v.slice(s, end).indexOf('\n') >= 0) {
        // Indent every selected line.
        var block = v.slice(lineStart, end).replace(/^/gm, INDENT);
        code.value = v.slice(0, lineStart) + block + v.slice(end);
        code.selectionStart = lineStart;
        code.selectionEnd = lineStart + block.length;
      } else {
        code.value = v.slice(0, s) + INDENT + v.slice(end);
        code.selectionStart = code.selectionEnd = s + INDENT.length;
      }
      numbers();
    });
    numbers();
  }
})();
