from stream_learner.cli import run

if __name__ == "__main__":  # worker processes re-import the main module: do not run again
    run()
