// Orthanc Explorer extension of the transfers accelerator (orthanc-transfers-py).
// A "Transfers accelerator" button on the patient, study, series and instance pages opens a dialog:
// the peers and their state, a compression choice, Send, then the job's progress until it ends (in pull mode,
// the local RemotePullTransfer job that follows the peer's job: "Synchronous": false asks for it).
// Everything is asynchronous, and a failure of the plugin's routes never breaks the Explorer's pages.
(function () {
  'use strict';

  var LEVELS = { patient: 'Patient', study: 'Study', series: 'Series', instance: 'Instance' };
  var STATES = { installed: 'push mode', bidirectional: 'pull mode' };
  var pollTimer = null;

  function escapeHtml(text) {
    return $('<div>').text(String(text)).html();
  }

  function errorMessage(xhr, fallback) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.Message) {
        return body.Message;
      }
    } catch (e) { /* not JSON */ }
    if (xhr && xhr.status) {
      return fallback + ' (HTTP ' + xhr.status + ')';
    }
    return fallback + ' (no answer from Orthanc)';
  }

  function formatDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) {
      return '';
    }
    seconds = Math.round(seconds);
    if (seconds < 60) {
      return seconds + ' s';
    }
    var m = Math.floor(seconds / 60);
    return m + ' min ' + (seconds % 60) + ' s';
  }

  function number(value) {
    return (typeof value === 'number' && isFinite(value)) ? value : null;
  }

  // "X of Y MB", both in the instances' own size (CompletedSizeMB, from our plugin), then the bytes on the
  // wire and the speed; a C++ peer's job only says the wire's bytes, which are not a part of the total.
  function describeSizes(stats) {
    var total = number(stats.TotalSizeMB) || 0;
    var completed = number(stats.CompletedSizeMB);
    var wire = number(stats.WireSizeMB);
    if (wire === null) {
      wire = number(stats.UploadedSizeMB) || number(stats.DownloadedSizeMB) || 0;
    }
    var speed = (number(stats.NetworkSpeedKBs) || 0) + ' KB/s';
    if (completed !== null) {
      return completed + ' of ' + total + ' MB, ' + wire + ' MB on the wire, ' + speed;
    }
    return total + ' MB to transfer, ' + wire + ' MB on the wire so far, ' + speed;
  }

  // The job's own estimate (RemainingSeconds) when it gives one; otherwise, from the progress so far.
  function timeLeft(stats, progress, elapsed) {
    var remaining = number(stats.RemainingSeconds);
    if (remaining !== null) {
      return Math.max(0, remaining);
    }
    if ('CompletedSizeMB' in stats) {
      return null;  // our plugin says nothing yet: too early to mean something
    }
    return (progress > 0 && progress < 100) ? elapsed * (100 - progress) / progress : null;
  }

  function setStatus(state, html) {
    $('#transfers-status').attr('data-state', state).html(html);
  }

  function stopPolling() {
    if (pollTimer !== null) {
      clearTimeout(pollTimer);
      pollTimer = null;
    }
  }

  function followJob(jobId, started) {
    stopPolling();
    $.ajax({
      url: '../jobs/' + jobId,
      dataType: 'json',
      cache: false,
      success: function (job) {
        var content = job.Content || {};
        var remote = job.Type === 'RemotePullTransfer';
        var stats = remote ? (content.RemoteContent || {}) : content;  // the peer's job's numbers
        var progress = job.Progress || 0;
        var elapsed = (new Date().getTime() - started) / 1000;
        var lines = [
          '<b>Job ' + escapeHtml(job.State) + '</b>: ' + progress + ' %' +
            (remote ? ' (pull mode: peer <b>' + escapeHtml(content.Peer) + '</b> runs the transfer as its job <code>' +
                      escapeHtml(content.RemoteJob) + '</code>, ' + escapeHtml(content.RemoteState || 'Pending') + ')'
                    : ''),
          (stats.CompletedHttpQueries || 0) + ' bucket(s) ' + (remote ? 'fetched, ' : 'sent, ') + describeSizes(stats),
        ];
        var left = timeLeft(stats, progress, elapsed);
        if (left !== null && job.State !== 'Success') {
          lines.push('About ' + formatDuration(left) + ' left');
        }
        lines.push('<a href="#job?uuid=' + encodeURIComponent(jobId) + '" rel="close">Open the job page</a>');
        if (job.State === 'Success') {
          setStatus('Success', '<b>Transfer complete</b>: ' + (stats.TotalInstances || 0) +
                    ' instance(s) verified and stored by the peer' +
                    (remote ? ' (pull mode, its job <code>' + escapeHtml(content.RemoteJob) + '</code>)' : '') +
                    '.<br/>' + lines.slice(1).join('<br/>'));
        } else if (job.State === 'Failure') {
          setStatus('Failure', '<b>The transfer failed</b>: ' + escapeHtml(job.ErrorDescription || 'unknown error') +
                    '<br/>' + lines[lines.length - 1]);
        } else {
          setStatus(job.State, lines.join('<br/>'));
          pollTimer = setTimeout(function () { followJob(jobId, started); }, 1000);
        }
      },
      error: function (xhr) {
        setStatus('Failure', 'Cannot read the job: ' + escapeHtml(errorMessage(xhr, 'error')));
      }
    });
  }

  function send(level, resourceId) {
    var peer = $('#transfers-peer').val();
    var compression = $('#transfers-compression').val();
    if (!peer) {
      setStatus('Error', 'Choose a peer that runs the transfers accelerator.');
      return;
    }
    $('#transfers-send').addClass('ui-disabled');
    setStatus('Sending', 'Sending the transfer request...');
    $.ajax({
      url: '../transfers/send',
      type: 'POST',
      dataType: 'json',
      contentType: 'application/json',
      data: JSON.stringify({
        Resources: [{ Level: level, ID: resourceId }],
        Compression: compression,
        Peer: peer,
        Synchronous: false  // a job to follow here in both modes
      }),
      success: function (answer) {
        if (answer.ID) {
          followJob(answer.ID, new Date().getTime());
        } else {
          setStatus('Failure', 'The plugin answered without a job to follow: ' + escapeHtml(JSON.stringify(answer)));
        }
      },
      error: function (xhr) {
        $('#transfers-send').removeClass('ui-disabled');
        setStatus('Failure', '<b>The transfer could not start</b>: ' +
                  escapeHtml(errorMessage(xhr, 'Error while creating the transfer job')));
      }
    });
  }

  function buildDialog(level, resourceId) {
    var content = $('<div>').attr('id', 'transfers-dialog').css('padding', '10px');
    content.append($('<p>').text('Send this ' + level.toLowerCase() + ' to another Orthanc over the transfers ' +
                                 'accelerator (buckets, parallel connections, MD5 check, all or nothing).'));
    var peerField = $('<div>').attr('data-role', 'fieldcontain');
    peerField.append($('<label>').attr('for', 'transfers-peer').text('Peer'));
    var select = $('<select>').attr('id', 'transfers-peer').attr('name', 'transfers-peer')
      .attr('data-native-menu', 'true');
    select.append($('<option>').attr('value', '').text('Loading the peers...'));
    peerField.append(select);
    content.append(peerField);

    var compressionField = $('<div>').attr('data-role', 'fieldcontain');
    compressionField.append($('<label>').attr('for', 'transfers-compression').text('Compression'));
    compressionField.append($('<select>').attr('id', 'transfers-compression').attr('data-native-menu', 'true')
      .append($('<option>').attr('value', 'auto').text('auto (the best both peers have: zstd-shuffle between our peers, else gzip)'))
      .append($('<option>').attr('value', 'gzip').text('gzip (smaller on the wire)'))
      .append($('<option>').attr('value', 'none').text('none (fastest on a fast network)')));
    content.append(compressionField);

    content.append($('<a>').attr({ id: 'transfers-send', href: '#', 'data-role': 'button', 'data-icon': 'forward',
                                   'data-theme': 'b' }).text('Send').addClass('ui-disabled')
      .click(function (e) { e.preventDefault(); send(level, resourceId); }));
    content.append($('<div>').attr('id', 'transfers-status').attr('data-state', 'Idle')
      .css({ 'margin-top': '10px', 'min-height': '3em' }));
    content.append($('<a>').attr({ id: 'transfers-close', href: '#', rel: 'close', 'data-role': 'button',
                                   'data-icon': 'delete' }).text('Close'));

    $('<div>').simpledialog2({
      mode: 'blank',
      animate: false,
      headerText: 'Transfers accelerator',
      headerClose: true,
      forceInput: false,
      width: '480px',
      blankContent: content,
      callbackClose: stopPolling
    });

    $.ajax({
      url: '../transfers/peers',
      dataType: 'json',
      cache: false,
      success: function (peers) {
        var names = Object.keys(peers).sort();
        var usable = 0;
        select.empty();
        if (names.length === 0) {
          select.append($('<option>').attr('value', '').text('No Orthanc peer is configured'));
        }
        $.each(names, function (i, name) {
          var state = peers[name];
          var option = $('<option>').attr('value', name);
          if (STATES[state]) {
            option.text(name + ' (' + STATES[state] + ')');
            usable += 1;
          } else {
            option.text(name + ' (disabled: unreachable or no transfers accelerator)').attr('disabled', 'disabled');
          }
          select.append(option);
        });
        var first = select.find('option:not([disabled])').first();
        if (first.length) {
          select.val(first.attr('value'));
        }
        try { select.selectmenu('refresh', true); } catch (e) { /* not enhanced yet */ }
        if (usable > 0) {
          $('#transfers-send').removeClass('ui-disabled');
        } else {
          setStatus('Error', 'No peer runs the transfers accelerator.');
        }
      },
      error: function (xhr) {
        select.empty().append($('<option>').attr('value', '').text('The peers cannot be listed'));
        setStatus('Failure', escapeHtml(errorMessage(xhr, 'Cannot list the peers')));
      }
    });
  }

  // The resource of the page shown: from the URL (#study?uuid=...), else from jQuery Mobile's page data.
  function currentUuid(page) {
    var m = new RegExp('^#' + page + '\\?(?:.*&)?uuid=([^&]+)').exec(window.location.hash);
    if (m) {
      return decodeURIComponent(m[1]);
    }
    return ($.mobile.pageData && $.mobile.pageData.uuid) || null;
  }

  function addButton(page) {
    var level = LEVELS[page];
    var anchor = $('#' + page + '-delete').closest('ul');
    if (!anchor.length || $('#' + page + '-transfers').length) {
      return;
    }
    var button = $('<a>').attr({ id: page + '-transfers', href: '#', 'data-role': 'button', 'data-icon': 'search',
                                 'data-theme': 'e' }).addClass('transfers-accelerator-button')
      .text('Transfers accelerator');
    button.click(function (e) {
      e.preventDefault();
      try {
        var id = currentUuid(page);
        if (id) {
          buildDialog(level, id);
        }
      } catch (err) {
        if (window.console) { window.console.error('Transfers accelerator:', err); }
      }
    });
    button.insertBefore(anchor);
  }

  $.each(LEVELS, function (page) {
    $('#' + page).live('pagebeforecreate', function () {
      try {
        addButton(page);
      } catch (err) {
        if (window.console) { window.console.error('Transfers accelerator:', err); }
      }
    });
  });
}());
