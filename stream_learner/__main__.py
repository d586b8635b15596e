from stream_learner.cli import run

run()
