"""Where each server lives: its module (`python -m`) and its gRPC service's full name (health
checks, reflection, retry configuration), read from the generated descriptors."""

from __future__ import annotations

from models.components import COMPONENTS
from pmis.v1 import collaborative_pb2, content_pb2, gateway_pb2, ranker_pb2, success_pb2, trainer_pb2

COMPONENT_MODULES = {c: f"services.{c}.server" for c in COMPONENTS}
SERVICE_NAMES = {name: module.DESCRIPTOR.services_by_name[service].full_name for name, module, service in (
    ("content", content_pb2, "ContentService"), ("collaborative", collaborative_pb2, "CollaborativeService"),
    ("success", success_pb2, "SuccessService"), ("ranker", ranker_pb2, "RankerService"),
    ("gateway", gateway_pb2, "RecommendationGateway"), ("trainer", trainer_pb2, "TrainerService"))}
SERVERS = [*COMPONENTS, "gateway", "trainer"]
