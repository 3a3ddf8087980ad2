// A Node.js client of the PMIS recommendation gateway, built from the repository's protos alone
// (protos/pmis/v1 and the vendored google/rpc protos in protos/third_party).
//
//   npm ci && node recommend.js [host:port] [student_id]
//
// Field names: the protos use snake_case and the server reads them as such. proto-loader is told
// `keepCase: true`, so requests and answers use `student_id`, not `studentId`: without it an
// object with `student_id` would be silently sent without the field.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const LOAD_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  arrays: true, // empty repeated fields as [] (degraded, items, reasons)
  oneofs: true,
  includeDirs: [PROTOS, path.join(PROTOS, "third_party")],
};

const gatewayDef = protoLoader.loadSync("pmis/v1/gateway.proto", LOAD_OPTIONS);
const pmis = grpc.loadPackageDefinition(gatewayDef).pmis.v1;

// Error details: the google.rpc.Status in the `grpc-status-details-bin` trailer, decoded with
// protobufjs (what proto-loader is built on) from the vendored protos.
const errorProtos = new protobuf.Root();
errorProtos.resolvePath = (origin, target) => path.join(PROTOS, "third_party", target);
errorProtos.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = errorProtos.lookupType("google.rpc.Status");
const BadRequest = errorProtos.lookupType("google.rpc.BadRequest");

const DEADLINE_MS = 5000;
const deadline = () => new Date(Date.now() + DEADLINE_MS);

// The BadRequest field violations an INVALID_ARGUMENT carries.
function fieldViolations(error) {
  const raw = error.metadata && error.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return [];
  return Status.decode(raw).details
    .filter((any) => any.type_url === "type.googleapis.com/google.rpc.BadRequest")
    .flatMap((any) => BadRequest.decode(any.value).field_violations);
}

function call(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, response) => (err ? reject(err) : resolve(response))));
}

function stream(client, requests) {
  return new Promise((resolve, reject) => {
    const answers = [];
    const s = client.StreamRecommend({ deadline: deadline() });
    s.on("data", (answer) => answers.push(answer));
    s.on("error", reject);
    s.on("end", () => resolve(answers));
    requests.forEach((r) => s.write(r));
    s.end();
  });
}

async function main() {
  const target = process.argv[2] || "127.0.0.1:50050";
  const student = process.argv[3] || "S0000001";
  const client = new pmis.RecommendationGateway(target, grpc.credentials.createInsecure());

  const answer = await call(client, "Recommend", { student_id: student, k: 5 });
  console.log(`Recommend ${answer.student_id}: ranked by ${answer.ranking}, degraded [${answer.degraded.join(", ")}]`);
  answer.items.forEach((item) =>
    console.log(`  ${item.rank}. ${item.internship_id} ${item.title} (${item.district}): ${item.explanation.reasons[0] || ""}`));

  const answers = await stream(client, [
    { student_id: student, k: 3 },
    { student_id: student, k: 500 },
    { profile: { skills: ["python", "sql"], district: "Pune" }, k: 2 },
  ]);
  answers.forEach((a, i) =>
    console.log(`StreamRecommend #${i + 1}: ${a.error ? "error " + a.error : a.items.length + " items"}`));

  try {
    await call(client, "Recommend", { student_id: student, k: 500 });
    console.log("Recommend k=500: unexpectedly OK");
  } catch (err) {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
    console.log(`Recommend k=500: ${name}`);
    fieldViolations(err).forEach((v) => console.log(`  field violation ${v.field}: ${v.description}`));
  }
  client.close();
}

main().catch((err) => {
  console.error(`failed: ${err.message}`);
  process.exit(1);
});
