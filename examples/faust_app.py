"""A Faust app that learns continually with stream-learner, beside (or instead of) the service.

It reads the service's topics (events, delayed labels, control) under the config's prefix,
publishes one prediction per request to the predictions topic, dead-letters bad input with
the service's reasons, and keeps signed checkpoints on the service's checkpoint topic, so
``stream-learner checkpoints``, ``replay --from-checkpoint`` and ``run`` read what it wrote.
Metrics: ``http://127.0.0.1:6066/metrics`` (``runtime="faust"``). Run it with:

    STREAM_LEARNER_SNAPSHOT_KEY=$(openssl rand -hex 32) \\
        .venv/bin/python examples/faust_app.py worker --loglevel=warn

``STREAM_LEARNER_CONFIG`` names the config (default: examples/config.toml beside this
file), ``STREAM_LEARNER_BOOTSTRAP`` the broker (default: the config's, else the local one).
"""

from __future__ import annotations

import os
from pathlib import Path

from stream_learner.config import load_config
from stream_learner.integrations.faust import FaustLearner, faust_app

config = load_config(
    os.environ.get("STREAM_LEARNER_CONFIG", Path(__file__).with_name("config.toml"))
)
app = faust_app(config, web_port=int(os.environ.get("FAUST_WEB_PORT", "6066")))
learner = FaustLearner(app, config)

# Your own agents, tables and pages go here as in any Faust app: for example an agent on
# learner.predictions that acts on the predictions.

if __name__ == "__main__":
    app.main()
