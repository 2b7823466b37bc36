// A Node.js client of dispatcher-gateway's DispatchService, with @grpc/grpc-js and the .proto
// loaded at run time (@grpc/proto-loader): it dispatches an email, watches the job to its end,
// then follows it on Subscribe, breaks off after the first event, and resumes from that event's
// cursor, as a client does after a restart or a stream the server ended.
//
//   GATEWAY_TARGET=127.0.0.1:50051 node client.js          (make run's gateway: plaintext)
//   DISPATCHER_GATEWAY_TOKEN=dgw_... GATEWAY_TLS_CA=ca.pem GATEWAY_TARGET=host:50051 node client.js
//
// Each line it prints is one fact: "dispatched JOB STATE", "watch CURSOR TYPE STATE",
// "subscribe CURSOR TYPE STATE", "resume after CURSOR", "resumed CURSOR TYPE STATE", "done".
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = process.env.GATEWAY_PROTOS || path.resolve(__dirname, "../../protos");
const TARGET = process.env.GATEWAY_TARGET || "127.0.0.1:50051";
const TOKEN = process.env.DISPATCHER_GATEWAY_TOKEN || "";
const CA = process.env.GATEWAY_TLS_CA || "";
const DEADLINE_MS = 10_000;

const definition = protoLoader.loadSync("dispatcher/gateway/v1/gateway.proto", {
  includeDirs: [PROTOS],
  keepCase: true, // field names as in the .proto: job_id, after_cursor
  longs: String, // int64 (template ids) as strings, as in protobuf's JSON
  enums: String, // enum values by name: "JOB_STATE_SUCCEEDED"
  defaults: true,
});
const { DispatchService } = grpc.loadPackageDefinition(definition).dispatcher.gateway.v1;

function credentials() {
  if (!CA) {
    // Plaintext: only to a gateway on this machine (make run), never with a token.
    if (TOKEN) throw new Error("refusing to send a token without TLS: set GATEWAY_TLS_CA");
    return grpc.credentials.createInsecure();
  }
  const tls = grpc.credentials.createSsl(fs.readFileSync(CA));
  if (!TOKEN) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${TOKEN}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

const client = new DispatchService(TARGET, credentials());

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// Reads a server stream, calling onEvent for each event until it returns true (then the call is
// cancelled) or the stream ends; resolves with the events read.
function follow(call, onEvent) {
  return new Promise((resolve, reject) => {
    const events = [];
    let stopped = false;
    call.on("data", (event) => {
      if (stopped) return;
      events.push(event);
      if (onEvent(event)) {
        stopped = true;
        call.cancel();
        resolve(events);
      }
    });
    call.on("error", (error) => {
      if (stopped && error.code === grpc.status.CANCELLED) return;
      reject(error);
    });
    call.on("end", () => {
      if (!stopped) resolve(events);
    });
  });
}

function line(kind, event) {
  const terminal = event.terminal ? " terminal" : "";
  console.log(`${kind} ${event.cursor} ${event.type} ${event.state}${terminal}`);
}

async function main() {
  const { job } = await unary("Dispatch", {
    service: "SERVICE_EMAIL",
    template: { id: 1 },
    email: {
      sender: { email: "noreply@example.com" },
      to: [{ email: "ada@example.com" }],
      subject: "Hello from Node.js",
    },
    metadata: { example: "node" },
  });
  console.log(`dispatched ${job.job_id} ${job.state}`);

  // WatchJob: the job's events so far, then live; the server ends it after the terminal event.
  await follow(client.WatchJob({ job_id: job.job_id }, { deadline: deadline() }), (event) => {
    line("watch", event);
    return false;
  });

  // Subscribe from the start, filtered to this job; stop after the first event and keep its
  // cursor, as a client would store it.
  const filter = { job_ids: [job.job_id] };
  const [first] = await follow(client.Subscribe(filter), (event) => {
    line("subscribe", event);
    return true;
  });
  console.log(`resume after ${first.cursor}`);

  // Resume: every event after the cursor, none before it, none twice.
  await follow(client.Subscribe({ ...filter, after_cursor: first.cursor }), (event) => {
    line("resumed", event);
    return event.terminal;
  });
  console.log("done");
}

main()
  .catch((error) => {
    console.error(`error: ${error.code !== undefined ? `${grpc.status[error.code]}: ` : ""}${error.details || error.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
