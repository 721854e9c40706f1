"""Mongo-API store: campaigns, rounds, candidates, evaluations, models, references."""

from matloop.store.backends import Backend, StoreURIError, redact_uri
from matloop.store.documents import (
    CampaignDoc,
    CandidateDoc,
    CandidateStatus,
    DftDoc,
    EvaluationDoc,
    ModelDoc,
    ReferenceDoc,
    RelaxationDoc,
    RoundDoc,
)
from matloop.store.facade import MatloopStore

__all__ = [
    "Backend",
    "CampaignDoc",
    "CandidateDoc",
    "CandidateStatus",
    "DftDoc",
    "EvaluationDoc",
    "MatloopStore",
    "ModelDoc",
    "ReferenceDoc",
    "RelaxationDoc",
    "RoundDoc",
    "StoreURIError",
    "redact_uri",
]
