"""`pmis recommend`: a small client that prints the gateway's answer as a readable table."""

from __future__ import annotations

import sys

import grpc

from pmis.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.errors import field_violations

LIST_FIELDS = {"skills", "preferred_sectors", "preferred_districts"}
FLOAT_FIELDS = {"cgpa", "latitude", "longitude"}


def parse_profile(pairs: list[str]) -> common_pb2.StudentProfile:
    """`skills=python,sql district=Pune cgpa=8.1` -> StudentProfile."""
    p = common_pb2.StudentProfile()
    for pair in pairs:
        key, _, value = pair.partition("=")
        key = key.strip()
        if key in LIST_FIELDS:
            getattr(p, key).extend(v.strip() for v in value.split(",") if v.strip())
        elif key in FLOAT_FIELDS:
            setattr(p, key, float(value))
        elif key == "college_tier":
            p.college_tier = int(value)
        elif key in ("education", "field", "district", "state"):
            setattr(p, key, value)
        else:
            raise ValueError(f"unknown profile field {key!r}")
    return p


def format_response(resp: gateway_pb2.RecommendResponse) -> str:
    who = resp.student_id or "new student (profile)"
    lines = [f"Recommendations for {who}: ranked by {resp.ranking}"
             + (f"; degraded: {', '.join(resp.degraded)}" if resp.degraded else "")
             + ("; components answered from different data versions" if resp.mixed_data_versions else "")]
    lines.append(f"{'#':>2}  {'internship':10s} {'title':34s} {'district':18s} {'stipend':>7s} {'P(sel)':>6s}  why")
    for it in resp.items:
        prob = f"{it.scores.success_probability:.2f}" if it.scores.HasField("success_probability") else "  -"
        place = "remote" if it.remote else it.district
        why = "; ".join(it.explanation.reasons[:3])
        lines.append(f"{it.rank:>2}  {it.internship_id:10s} {it.title[:34]:34s} {place[:18]:18s} "
                     f"{it.stipend:7.0f} {prob:>6s}  {why}")
    lines.append("models: " + ", ".join(f"{m.component} v{m.version}" for m in resp.models))
    return "\n".join(lines)


def recommend(target: str, request: gateway_pb2.RecommendRequest, timeout: float = 5.0) -> gateway_pb2.RecommendResponse:
    with grpc.insecure_channel(target) as channel:
        return gateway_pb2_grpc.RecommendationGatewayStub(channel).Recommend(request, timeout=timeout)


def demo_requests(target: str) -> None:
    """A known student and a brand-new one given only a profile: the main job's real requests."""
    known = recommend(target, gateway_pb2.RecommendRequest(student_id="S0000001", k=5))
    print(format_response(known), "\n", flush=True)
    profile = parse_profile(["skills=python,sql,data analysis,excel", "education=BCA", "field=Computer Applications",
                             "district=Pune", "state=Maharashtra", "latitude=18.52", "longitude=73.86",
                             "preferred_sectors=Information Technology", "cgpa=8.2", "college_tier=2"])
    fresh = recommend(target, gateway_pb2.RecommendRequest(profile=profile, k=5))
    print(format_response(fresh), "\n", flush=True)


def main_recommend(args) -> int:
    req = gateway_pb2.RecommendRequest(k=args.k, mode=gateway_pb2.Mode.Value(f"MODE_{args.mode.upper()}"))
    if args.student:
        req.student_id = args.student
    if args.profile:
        try:
            req.profile.CopyFrom(parse_profile(args.profile))
        except ValueError as e:  # an unknown field, a number that is not one
            print(f"error: --profile: {e}", file=sys.stderr)
            return 2
    try:
        print(format_response(recommend(args.target, req, args.timeout)))
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}")
        for field, description in field_violations(e):
            print(f"  {field}: {description}")
        return 2
    return 0
