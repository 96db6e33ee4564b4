// Submit a workflow to the Graflow scheduler from Node.js, answer the approval one of its tasks
// asks for, watch it to the end, print its result.
//
//   node submit.js <proto-dir> <scheduler-address> <result-store-address>
//
// TLS, with the Python SDK's variables: GRAFLOW_CLIENT_TLS_CA_FILE (use TLS, trusting servers that
// CA signed), GRAFLOW_CLIENT_TLS_CERT_FILE and GRAFLOW_CLIENT_TLS_KEY_FILE (a client certificate,
// for servers that require one). Without a CA: plaintext.
//
// Uses only the contracts in proto/graflow_api/v1 (loaded at run time, no generated code).
// Prints one JSON line per event, one per answered request, then {"status": ..., "result": ...}.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protoDir, schedulerAddress, resultStoreAddress] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  ["scheduler.proto", "result_store.proto"].map((f) => path.join(protoDir, "graflow_api/v1", f)),
  { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true },
);
const api = grpc.loadPackageDefinition(definition).graflow_api.v1;

function channelCredentials() {
  const read = (name) => (process.env[name] ? fs.readFileSync(process.env[name]) : null);
  const ca = read("GRAFLOW_CLIENT_TLS_CA_FILE");
  if (!ca) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(ca, read("GRAFLOW_CLIENT_TLS_KEY_FILE"), read("GRAFLOW_CLIENT_TLS_CERT_FILE"));
}

const credentials = channelCredentials();
const scheduler = new api.Scheduler(schedulerAddress, credentials);
const resultStore = new api.ResultStore(resultStoreAddress, credentials);
const deadline = () => new Date(Date.now() + 30000);

const spec = {
  name: "from-node",
  nodes: [
    { id: "source", task_type: "source", args_json: Buffer.from(JSON.stringify({ value: 20 })) },
    { id: "approve", task_type: "ask", args_json: Buffer.from(JSON.stringify({ prompt: "go on?" })) },
    { id: "add_one", task_type: "add_one" },
    { id: "double", task_type: "double" },
  ],
  edges: [
    { from_id: "source", to_id: "add_one" },
    { from_id: "approve", to_id: "add_one" },
    { from_id: "add_one", to_id: "double" },
  ],
};

// Approve every pending request of the run (the task waiting on it runs again with the answer).
function answer(runId) {
  scheduler.ListFeedback({ run_id: runId }, { deadline: deadline() }, (err, listed) => {
    if (err) throw err;
    for (const request of listed.requests) {
      const response = { approved: true, responded_by: "node-client" };
      scheduler.RespondFeedback({ run_id: runId, request_id: request.request_id, response },
        { deadline: deadline() }, (err2, answered) => {
          if (err2) throw err2;
          console.log(JSON.stringify({ answered: answered.request_id, state: answered.state }));
        });
    }
  });
}

scheduler.SubmitRun({ spec }, { deadline: deadline() }, (err, submitted) => {
  if (err) throw err;
  const runId = submitted.run_id;
  const stream = scheduler.WatchRun({ run_id: runId }, { deadline: deadline() });
  stream.on("data", (event) => {
    console.log(JSON.stringify({ event: event.type, node: event.node_id, attempt: event.attempt }));
    if (event.type === "TYPE_NODE_WAITING") answer(runId);
  });
  stream.on("error", (e) => { throw e; });
  stream.on("end", () => {
    scheduler.GetRun({ run_id: runId }, { deadline: deadline() }, (err2, run) => {
      if (err2) throw err2;
      resultStore.GetResults({ run_id: runId, node_ids: run.sink_node_ids }, { deadline: deadline() },
        (err3, results) => {
          if (err3) throw err3;
          const values = Object.fromEntries(
            results.results.map((r) => [r.node_id, JSON.parse(r.value.data.toString("utf8"))]),
          );
          console.log(JSON.stringify({ status: run.status, run_id: runId, result: values }));
          process.exit(0);
        });
    });
  });
});
