"""Transport security (services/common/tls.py): TLS servers refuse plaintext, mTLS servers refuse
clients without a certificate, components answer only the callers they allow, a renewed
certificate is served without a restart, and the whole Recommend path works over mTLS."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pmis.v1 import common_pb2, content_pb2_grpc
from services.common.devcerts import Authority
from services.common.server import ComponentServer
from services.common.tls import ClientTLS, ServerTLS
from services.content import server as content_server
from tests.support.loopback import SERVERS, GatewayRunner, component_config
from tests.support.waiting import wait_until

RETRIEVE = common_pb2.RetrieveRequest(profile=common_pb2.StudentProfile(skills=["python"]), n=3)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder)
    return {"ca": ca, "server": ca.issue("content", server=True), "gateway": ca.issue("gateway", server=False),
            "intruder": ca.issue("intruder", server=False),
            "rogue": Authority(folder, "rogue-ca").issue("gateway", server=False), "folder": folder}


@pytest.fixture(scope="module")
def content(pki, small_system):
    """A content server with TLS, client certificates from the CA, and only `gateway` allowed."""
    tls = ServerTLS(pki["server"].cert, pki["server"].key, pki["ca"].path, frozenset({"gateway"}))
    cfg = component_config("content", small_system.bundles, tls)
    server = ComponentServer(cfg, content_server.SERVICE, content_server.make_servicer(cfg),
                             SERVERS["content"][1]).start()
    try:
        wait_until(lambda: server.load_error or server.ready.is_set(), 60, "content SERVING")
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


def client(pki, target: str, identity: str | None, ca=None) -> grpc.Channel:
    pair = pki[identity] if identity else None
    tls = ClientTLS(ca or pki["ca"].path, pair.cert if pair else None, pair.key if pair else None)
    return grpc.secure_channel(target, tls.credentials())


def code_of(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_tls_server_refuses_plaintext_and_clients_without_a_certificate(pki, content):
    with grpc.insecure_channel(content) as plain:
        assert code_of(lambda: content_pb2_grpc.ContentServiceStub(plain).Retrieve(RETRIEVE, timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE
    with client(pki, content, None) as anonymous:       # TLS, but no client certificate: no handshake
        assert code_of(lambda: content_pb2_grpc.ContentServiceStub(anonymous).Retrieve(RETRIEVE, timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE
    with client(pki, content, "rogue") as rogue:         # a certificate from another CA: no handshake
        assert code_of(lambda: content_pb2_grpc.ContentServiceStub(rogue).Retrieve(RETRIEVE, timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE


def test_components_answer_only_the_callers_they_allow(pki, content):
    with client(pki, content, "intruder") as intruder:
        stub = content_pb2_grpc.ContentServiceStub(intruder)
        with pytest.raises(grpc.RpcError) as info:
            stub.Retrieve(RETRIEVE, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "intruder" in info.value.details() and "ContentService/Retrieve" in info.value.details()
        # probes stay open to any client that completes the handshake
        assert health_pb2_grpc.HealthStub(intruder).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    with client(pki, content, "gateway") as gateway:
        assert len(content_pb2_grpc.ContentServiceStub(gateway).Retrieve(RETRIEVE, timeout=5).internship_ids) == 3


def test_renewed_certificate_is_served_without_a_restart(pki, small_system, tmp_path):
    old = pki["ca"].issue("content", server=True, stem="renewed-content")  # files the server reads
    tls = ServerTLS(old.cert, old.key)
    cfg = component_config("content", small_system.bundles, tls)
    server = ComponentServer(cfg, content_server.SERVICE, content_server.make_servicer(cfg),
                             SERVERS["content"][1]).start()
    try:
        wait_until(lambda: server.load_error or server.ready.is_set(), 60, "content SERVING")
        target = f"127.0.0.1:{server.port}"
        other_ca = Authority(tmp_path, "renewal-ca")

        def answers_with(ca) -> bool:
            with grpc.secure_channel(target, ClientTLS(ca).credentials()) as channel:
                return code_of(lambda: content_pb2_grpc.ContentServiceStub(channel).Retrieve(RETRIEVE, timeout=5)) \
                    == grpc.StatusCode.OK
        assert answers_with(pki["ca"].path) and not answers_with(other_ca.path)
        renewed = other_ca.issue("content", server=True)
        old.key.write_bytes(renewed.key.read_bytes())   # a Secret update: both files replaced
        old.cert.write_bytes(renewed.cert.read_bytes())
        wait_until(lambda: answers_with(other_ca.path), 10, "new connections to get the renewed certificate")
        assert not answers_with(pki["ca"].path)
    finally:
        server.stop()


def test_recommend_end_to_end_over_mtls(pki, small_system):
    from tests.support.loopback import Components

    ca = pki["ca"]
    component_tls = ServerTLS(pki["server"].cert, pki["server"].key, ca.path, frozenset({"gateway"}))
    components = Components(small_system.bundles, component_tls)
    gateway_cert = ca.issue("gateway", server=True, stem="gateway-serving")
    try:
        runner = GatewayRunner(
            components.targets, small_system.catalog, fairness_strength=0.0,
            # the gateway serves TLS to its clients and dials the components with its own identity
            tls=ServerTLS(gateway_cert.cert, gateway_cert.key),
            client_tls=ClientTLS(ca.path, pki["gateway"].cert, pki["gateway"].key),
            dial_tls=ClientTLS(ca.path))  # this test's client: verifies the gateway, no certificate
        try:
            answer = runner.recommend(student_id="S0000001", k=5)
            assert len(answer.items) == 5 and list(answer.degraded) == [] and answer.ranking == "ranker"
        finally:
            runner.close()
    finally:
        components.stop()
