"""Structured logs: one JSON line per event of interest, with secrets masked on the way out.

A line looks like::

    {"ts":"2024-05-01T12:00:00.123Z","level":"INFO","logger":"stream_learner.service",
     "event":"retrain_finished","key":"fraud","outcome":"promoted","duration_s":1.7}

(one line in reality). Decisions worth knowing:

- :func:`log_event` passes its fields as one ``extra`` entry, so a field may be named like a
  ``LogRecord`` attribute (``name``, ``module``, ``process``) without ``logging`` refusing it;
  plain ``logger.info(..., extra={...})`` fields come out as top-level keys too.
- ``ts``, ``level``, ``logger``, ``event`` and ``exc`` belong to the line; a field with one of
  those names comes out with a trailing underscore (``ts_``) instead of overwriting them.
- A value JSON cannot hold is written as its ``str()``; logging never raises.
- **Secrets never reach the output.** Redaction runs in the formatter, on every field, inside
  nested mappings (a librdkafka config passed as a field) and on mapping arguments of the
  message. A *name* is secret when it ends in ``password``, ``passwd``, ``passphrase``,
  ``secret``, ``token`` or ``credentials``, names an API/private/access/secret key, or is a
  setting whose value embeds a credential (``ssl.key.pem``, ``sasl.oauthbearer.config``,
  ``sasl.jaas.config``). A bare ``key``
  is a model key and stays visible, as does ``ssl.key.location`` (a path).
- **An outage is a few lines, not a flood.** librdkafka reports every failed connection
  attempt, to every broker, from every client: thousands of lines in a minute of outage.
  Free-text lines (not :func:`log_event` events, which are each worth keeping) that repeat
  the same text, numbers aside, within :data:`REPEAT_WINDOW_S` are dropped and counted;
  the next one after the window carries ``suppressed`` (how many were dropped).
- **Every line is JSON**, in a process that calls :func:`json_stderr` (the service and its
  retrain worker): Python's warnings go through logging, an uncaught exception in any
  thread is one line with its traceback in ``exc``, and whatever else writes to
  ``sys.stderr`` (a library's ``print``, a traceback printed at exit) comes out one JSON
  line per text line (``logger``: the stream's name).
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from stream_learner.errors import ConfigError

__all__ = [
    "MASK",
    "REPEAT_WINDOW_S",
    "JsonFormatter",
    "RepeatFilter",
    "configure_logging",
    "is_secret_name",
    "json_stderr",
    "log_event",
    "redact_config",
]

MASK = "***"

# Settings whose value is itself a credential although the name does not say so: an inline
# private key, and free-form strings that may embed a client secret.
_SECRET_SETTINGS = frozenset({"ssl.key.pem", "sasl.oauthbearer.config", "sasl.jaas.config"})
_SECRET_NAME = re.compile(
    r"(password|passwd|passphrase|secret|token|credentials?|(api|private|access|secret)[._-]?key)$",
    re.IGNORECASE,
)

_FIELDS_ATTR = "sl_fields"
_LINE_KEYS = frozenset({"ts", "level", "logger", "event", "exc"})
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "event",
    _FIELDS_ATTR,
}
REPEAT_WINDOW_S = 30.0
_DIGITS = re.compile(r"\d+")
_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_HANDLER_NAME = "stream_learner"


def is_secret_name(name: object) -> bool:
    """Whether a field or config key named ``name`` holds a credential."""
    text = str(name).lower()
    return text in _SECRET_SETTINGS or _SECRET_NAME.search(text) is not None


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_config(value)
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item) for item in value)
    return value


def redact_config(conf: Mapping) -> dict:
    """A copy of ``conf`` with every secret value replaced by :data:`MASK`, at any depth.

    Use it before printing or logging a librdkafka config. ``None`` stays ``None``: that a
    secret is *unset* is worth seeing and reveals nothing.

    >>> redact_config({"bootstrap.servers": "b:9092", "sasl.password": "hunter2", "key": "fraud"})
    {'bootstrap.servers': 'b:9092', 'sasl.password': '***', 'key': 'fraud'}
    """
    return {
        name: (MASK if value is not None else None) if is_secret_name(name) else _redact(value)
        for name, value in conf.items()
    }


def _default(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _message(record: logging.LogRecord) -> str:
    """``record.getMessage()`` with secrets masked in mapping arguments."""
    msg = record.msg
    if isinstance(msg, Mapping):
        msg = redact_config(msg)
    text = str(msg)
    if record.args:
        args = _redact(record.args)
        try:
            text = text % args
        except (TypeError, ValueError):  # a bad format string must not lose the line
            text = f"{text} {args!r}"
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ``ts``, ``level``, ``logger``, ``event``, fields."""

    def document(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line as a dict, secrets already masked."""
        event = getattr(record, "event", None)
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": str(event) if event is not None else _message(record),
        }
        fields = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        fields.update(getattr(record, _FIELDS_ATTR, None) or {})
        for name, value in redact_config(fields).items():
            doc[f"{name}_" if name in _LINE_KEYS else name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["exc"] = (doc.get("exc", "") + "\n" + self.formatStack(record.stack_info)).strip()
        return doc

    def format(self, record: logging.LogRecord) -> str:
        doc = self.document(record)
        try:
            return orjson.dumps(doc, default=_default, option=_DUMPS_OPTIONS).decode()
        except TypeError:  # orjson.JSONEncodeError: an int over 64 bits, a cycle, ...
            doc = {k: _jsonable(v) for k, v in doc.items()}
            return orjson.dumps(doc, default=_default, option=_DUMPS_OPTIONS).decode()


def _jsonable(value: Any) -> Any:
    try:
        orjson.dumps(value, default=_default, option=_DUMPS_OPTIONS)
    except TypeError:
        return _default(value)
    return value


class _TextFormatter(JsonFormatter):
    """The same content for a terminal: ``ts level logger event name=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        doc = self.document(record)
        exc = doc.pop("exc", None)
        head = " ".join(str(doc.pop(k)) for k in ("ts", "level", "logger", "event"))
        line = " ".join([head, *(f"{k}={v!r}" for k, v in doc.items())])
        return f"{line}\n{exc}" if exc else line


class RepeatFilter(logging.Filter):
    """Drops a free-text line that repeats (numbers aside) within ``window_s``; see the
    module docstring. Thread-safe: librdkafka logs from its own threads."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock=time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple, list] = {}  # shape -> [emitted at, dropped since]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "event", None) is not None:
            return True
        shape = (record.name, record.levelno, _DIGITS.sub("#", _message(record)))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(shape)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return False
            if len(self._seen) > 1000:  # bounded: forget the oldest shapes
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
            self._seen[shape] = [now, 0]
        if seen is not None and seen[1]:
            fields = dict(getattr(record, _FIELDS_ATTR, None) or {})
            fields["suppressed"] = seen[1]
            setattr(record, _FIELDS_ATTR, fields)
        return True


def log_decision(logger: logging.Logger, d: Any) -> None:
    """One trigger decision (``core.policy.Decision``) as its ``decision`` line: every
    runtime (the service, the Faust integration) logs them alike."""
    log_event(
        logger,
        "decision",
        key=d.key,
        trigger=d.trigger,
        action=d.action,
        code=d.code,
        reason=d.reason,
        kind=d.kind,
        index=d.index,
        ts=d.ts,
    )


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as top-level keys of the JSON line.

    >>> log_event(logging.getLogger("stream_learner.service"), "assigned", partitions=[0, 1])
    """
    logger.log(level, event, extra={"event": event, _FIELDS_ATTR: fields}, stacklevel=2)


class JsonLines(io.TextIOBase):
    """A text stream that writes every line it is given to ``stream`` as a JSON line: lines
    that already are one (from the logging handler) unchanged, others as a WARNING of
    ``logger``. Thread-safe; a partial line waits for its end (or a flush)."""

    def __init__(self, stream: IO[str], logger: str) -> None:
        super().__init__()
        self._stream = stream
        self._logger = logger
        self._lock = threading.Lock()
        self._partial = ""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # faulthandler and subprocess ask for it
        return self._stream.fileno()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._emit(self._partial)
                self._partial = ""
            self._stream.flush()

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        if not (line.startswith("{") and _is_json(line)):
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            doc = {"ts": now, "level": "WARNING", "logger": self._logger, "event": line}
            line = orjson.dumps(doc).decode()
        self._stream.write(line + "\n")
        self._stream.flush()


def _is_json(line: str) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def json_stderr(logger: str = "stream_learner.stderr") -> None:
    """Make everything this process writes to stderr a JSON line (see the module docstring).

    Call it after :func:`configure_logging`: the handler keeps writing to the real stderr."""
    logging.captureWarnings(True)
    if not isinstance(sys.stderr, JsonLines):
        sys.stderr = JsonLines(sys.stderr, logger)
    crash = logging.getLogger(logger)

    def uncaught(exc_type, exc, tb) -> None:
        crash.error("uncaught exception", exc_info=(exc_type, exc, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            crash.error(
                "uncaught exception in thread %s",
                getattr(args.thread, "name", "?"),
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


def configure_logging(
    level: str | int = "INFO", json: bool = True, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (default: stderr) as JSON lines, or as text.

    Calling it again replaces the handler it installed before instead of adding a second one.
    """
    if isinstance(level, str):
        names = logging.getLevelNamesMapping()
        if level.upper() not in names:
            choices = ", ".join(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
            raise ConfigError(f"log level {level!r} is not one of {choices}")
        level = names[level.upper()]
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json else _TextFormatter())
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler
