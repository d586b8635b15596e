"""The streaming service: the loop that feeds Kafka records to the learning core."""

from stream_learner.service.retrainer import Retrainer
from stream_learner.service.runtime import LearnerFactory, Service, Topics

__all__ = ["LearnerFactory", "Retrainer", "Service", "Topics"]
