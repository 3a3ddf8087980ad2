"""A bounded, seeded fuzzer over every public method of the gateway and the four components.

Three kinds of input, each sent as raw bytes through a real channel: messages with random field
values (extremes, NaN and infinities, unknown enum values, huge and empty lists, long and odd
strings, nested messages), byte-level mutations of valid requests, and random bytes. Whatever
arrives, a server must answer with a status that means something -- never INTERNAL or UNKNOWN --
no later than the call's deadline, and still be SERVING afterwards. The status table is printed
(`pytest -s tests/e2e/test_fuzz.py`).
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections import Counter, defaultdict

import grpc
import pytest
from google.protobuf import descriptor as pd
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pmis.v1 import collaborative_pb2, common_pb2, content_pb2, gateway_pb2, ranker_pb2, success_pb2
from services.common.guard import CORE_RECEIVE_LIMIT
from tests.support.loopback import running_system
from tests.support.waiting import wait_until

SEED = 20261128
CALLS = 5200
DEADLINE = 2.0        # seconds, every call
LATE_SLACK = 0.25     # the answer may take this much longer than the deadline to arrive (scheduling)
ADMIN = (("authorization", "Bearer fuzz-admin-token"),)

FLOATS = [0.0, -1.0, 1.0, 0.5, 1e308, -1e308, 1e-320, math.nan, math.inf, -math.inf, 90.0, -180.0, 10.5]
INTS = [0, 1, -1, 2, 7, 10, 100, 101, 1000, 2 ** 31 - 1, -(2 ** 31)]
STRINGS = ["", "S0000001", "S0000002", "I000001", "I000300", "python", "sql", "Pune", "Maharashtra", "x" * 5000,
           "S" + "9" * 40, "../../etc/passwd", "\u0000", "पुणे", "'; DROP TABLE interactions; --", " ", "I00000"]


def services():
    """(service full name, method descriptor) of every public method, by server."""
    found = {}
    for server, module, name in [("gateway", gateway_pb2, "RecommendationGateway"),
                                 ("content", content_pb2, "ContentService"),
                                 ("collaborative", collaborative_pb2, "CollaborativeService"),
                                 ("success", success_pb2, "SuccessService"),
                                 ("ranker", ranker_pb2, "RankerService")]:
        service = module.DESCRIPTOR.services_by_name[name]
        found[server] = [(service.full_name, m) for m in service.methods]
    return found


def random_value(field: pd.FieldDescriptor, rng: random.Random, depth: int):
    t = field.type
    if t in (pd.FieldDescriptor.TYPE_DOUBLE, pd.FieldDescriptor.TYPE_FLOAT):
        return rng.choice(FLOATS) if rng.random() < 0.7 else rng.uniform(-1e4, 1e4)
    if t in (pd.FieldDescriptor.TYPE_INT32, pd.FieldDescriptor.TYPE_SINT32, pd.FieldDescriptor.TYPE_SFIXED32):
        return rng.choice(INTS)
    if t in (pd.FieldDescriptor.TYPE_INT64, pd.FieldDescriptor.TYPE_SINT64, pd.FieldDescriptor.TYPE_SFIXED64):
        return rng.choice(INTS + [2 ** 63 - 1, -(2 ** 63), 1_764_000_000])
    if t in (pd.FieldDescriptor.TYPE_UINT32, pd.FieldDescriptor.TYPE_FIXED32):
        return rng.choice([0, 1, 5, 2 ** 32 - 1])
    if t in (pd.FieldDescriptor.TYPE_UINT64, pd.FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 5, 2 ** 64 - 1])
    if t == pd.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == pd.FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS) if rng.random() < 0.8 else "".join(chr(rng.randrange(32, 0x2FFF))
                                                                         for _ in range(rng.randrange(1, 40)))
    if t == pd.FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randrange(0, 64))
    if t == pd.FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99, -1])
    raise AssertionError(f"unhandled field type {t}")


def random_message(descriptor: pd.Descriptor, rng: random.Random, depth: int = 0):
    message = _message_class(descriptor)()
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        repeated = field.is_repeated
        if field.type == pd.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp":
                target = message if not repeated else None
                if target is not None:
                    getattr(message, field.name).FromSeconds(rng.choice([0, -1, 1_750_000_000, 253_402_300_799]))
                continue
            count = rng.choice([0, 1, 2, 3, 40]) if repeated else 1
            for _ in range(count):
                child = getattr(message, field.name).add() if repeated else getattr(message, field.name)
                child.CopyFrom(random_message(field.message_type, rng, depth + 1))
            continue
        if repeated:
            count = rng.choice([0, 1, 2, 5, 30, 400, 2000])
            getattr(message, field.name).extend(random_value(field, rng, depth) for _ in range(count))
        else:
            setattr(message, field.name, random_value(field, rng, depth))
    return message


_CLASSES = {}


def _message_class(descriptor: pd.Descriptor):
    if descriptor.full_name not in _CLASSES:
        from google.protobuf import message_factory
        _CLASSES[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
    return _CLASSES[descriptor.full_name]


VALID = {
    "RecommendRequest": gateway_pb2.RecommendRequest(student_id="S0000001", k=5),
    "ShortlistRequest": gateway_pb2.ShortlistRequest(internship_id="I000001", size=5),
    "RetrieveRequest": common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(skills=["python"]), n=10),
    "PredictRequest": success_pb2.PredictRequest(profile=common_pb2.StudentProfile(skills=["python"]),
                                                 internship_ids=["I000001", "I000002"]),
    "RankRequest": ranker_pb2.RankRequest(profile=common_pb2.StudentProfile(skills=["python"]),
                                          internship_ids=["I000001", "I000002"],
                                          component_scores=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]),
}


def server_counts() -> Counter:
    """pmis_grpc_requests_total of the in-process servers, by ("server.Method", code)."""
    from prometheus_client import REGISTRY

    out = Counter()
    for metric in REGISTRY.collect():
        if metric.name == "pmis_grpc_requests":
            for sample in metric.samples:
                if sample.name == "pmis_grpc_requests_total":
                    labels = sample.labels
                    out[(f"{labels['component']}.{labels['method']}", labels["code"])] += int(sample.value)
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(3)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif data:
            del data[rng.randrange(len(data))]
    return bytes(data)


def request_bytes(method: pd.MethodDescriptor, rng: random.Random) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.6:
        return "random fields", random_message(method.input_type, rng).SerializeToString()
    if roll < 0.85:
        seed = VALID.get(method.input_type.name) or random_message(method.input_type, rng)
        return "mutation", mutate(seed.SerializeToString(), rng)
    return "random bytes", rng.randbytes(rng.randrange(0, 200))


@pytest.fixture(scope="module")
def fuzz_system(small_system, tmp_path_factory):
    """Servers of the fuzzer's own (RecordInteraction writes to its copy of the catalog)."""
    catalog = tmp_path_factory.mktemp("fuzz") / "catalog.db"
    shutil.copy(small_system.catalog, catalog)
    mp = pytest.MonkeyPatch()
    mp.setenv("PMIS_ADMIN_TOKEN", "fuzz-admin-token")
    try:
        with running_system(small_system, catalog=catalog) as system:
            yield system
    finally:
        mp.undo()


def test_fuzz_every_public_method(fuzz_system):
    rng = random.Random(SEED)
    targets = {"gateway": f"127.0.0.1:{fuzz_system.gateway.port}", **fuzz_system.components.targets}
    methods = [(server, svc, m) for server, items in services().items() for svc, m in items]
    codes: dict[str, Counter] = defaultdict(Counter)
    bad, late = [], []
    channels = {server: grpc.insecure_channel(t) for server, t in targets.items()}
    counted_before, beyond_core = server_counts(), Counter()
    try:
        for i in range(CALLS):
            server, service, method = methods[i % len(methods)]
            path = f"/{service}/{method.name}"
            kind, payload = request_bytes(method, rng)
            metadata = ADMIN if rng.random() < 0.5 else None
            started = time.monotonic()
            try:
                if method.client_streaming:
                    payloads = [payload] + [request_bytes(method, rng)[1] for _ in range(rng.randrange(0, 3))]
                    call = channels[server].stream_stream(path)
                    list(call(iter(payloads), timeout=DEADLINE, metadata=metadata))
                else:
                    channels[server].unary_unary(path)(payload, timeout=DEADLINE, metadata=metadata)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    bad.append((path, kind, code.name, e.details(), payload[:80]))
            elapsed = time.monotonic() - started
            if elapsed > DEADLINE + LATE_SLACK:
                late.append((path, kind, round(elapsed, 3)))
            codes[f"{server}.{method.name}"][code.name] += 1
            if len(payload) > CORE_RECEIVE_LIMIT:  # refused by gRPC's core, never seen by our code
                beyond_core[(f"{server}.{method.name}", code.name)] += 1
    finally:
        for ch in channels.values():
            ch.close()
    print(f"\n[fuzz] {CALLS} calls, seed {SEED}; status codes by method:")
    for name in sorted(codes):
        print(f"  {name:36s} {sum(codes[name].values()):4d}  " +
              ", ".join(f"{c} {n}" for c, n in codes[name].most_common()))
    assert bad == [], bad[:10]
    assert late == [], late[:10]
    # Every call is counted by the server under the status its client saw: streaming ones, refused
    # ones (undecodable, over the size limit) included -- but for messages so large that gRPC's
    # core refuses them before any of our code runs. Components also count the calls the gateway
    # made to them while answering: at least what the fuzzer saw, for them.
    seen = Counter({(name, code): n for name, by_code in codes.items() for code, n in by_code.items()})
    seen -= beyond_core
    expected = {key: n for key, n in seen.items() if key[0].startswith("gateway.")}

    def gateway_counts() -> dict:
        return {key: n for key, n in (server_counts() - counted_before).items() if key[0].startswith("gateway.")}
    # asyncio sends an abort's status before the guard's count runs: the last ones may lag a moment
    wait_until(lambda: gateway_counts() == expected, 5, "every gateway call counted")
    counted = server_counts() - counted_before
    assert all(counted[key] >= n for key, n in seen.items()), [(k, counted[k], n) for k, n in seen.items()
                                                               if counted[k] < n]
    assert sum(sum(c.values()) for c in codes.values()) == CALLS and len(codes) == len(methods)
    for server, target in fuzz_system.components.targets.items():   # everyone still serving
        with grpc.insecure_channel(target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, server
    answer = fuzz_system.gateway.recommend(student_id="S0000001", k=5)
    assert len(answer.items) == 5 and list(answer.degraded) == []


NON_FINITE = [math.nan, math.inf, -math.inf]


def _field_violations_of(call) -> list[str]:
    from services.common.errors import field_violations

    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return [f for f, _ in field_violations(info.value)]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_floats_are_field_violations(fuzz_system, value):
    from pmis.v1 import ranker_pb2_grpc

    gw = fuzz_system.gateway
    profile = common_pb2.StudentProfile(skills=["python"])
    for name in ("cgpa", "latitude", "longitude"):
        p = common_pb2.StudentProfile(skills=["python"], **{name: value})
        assert _field_violations_of(lambda: gw.recommend(profile=p, k=5)) == [f"profile.{name}"]
    for name in ("radius_km", "min_stipend"):
        filters = gateway_pb2.Filters(**{name: value})
        assert _field_violations_of(lambda: gw.recommend(student_id="S0000001", k=5, filters=filters)) == \
            [f"filters.{name}"]
    fairness = gateway_pb2.FairnessOptions(enabled=True, strength=value)
    assert _field_violations_of(lambda: gw.recommend(student_id="S0000001", k=5, fairness=fairness)) == \
        ["fairness.strength"]
    with grpc.insecure_channel(fuzz_system.components.targets["ranker"]) as channel:
        rank = ranker_pb2_grpc.RankerServiceStub(channel).Rank
        scores = [0.1, 0.2, 0.3, 0.4, 0.5, value, 0.7, 0.8]  # two candidates x four components
        request = ranker_pb2.RankRequest(profile=profile, internship_ids=["I000001", "I000002"],
                                         component_scores=scores)
        if math.isnan(value):  # NaN is how a caller says "this component did not answer"
            assert len(rank(request, timeout=10).scores) == 2
        else:
            assert _field_violations_of(lambda: rank(request, timeout=10)) == ["component_scores"]
