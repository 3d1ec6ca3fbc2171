// An existing service of the kind steward runs as it is: an HTTP server that reads its
// settings from the environment, serves /health, and on SIGTERM stops taking requests,
// finishes the ones it has, and exits 0. Nothing in it knows about steward.
"use strict";
const http = require("http");

const port = Number(process.env.PORT);
const database = process.env.DATABASE_URL;
if (!database) {
  // What such services do: say so and exit with their own "misconfigured" code.
  console.error("DATABASE_URL is not set");
  process.exit(158);
}

let inFlight = 0;
const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  inFlight += 1;
  // Some work: answer after a moment.
  setTimeout(() => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ instance: process.env.STEWARD_INSTANCE, port }));
    inFlight -= 1;
  }, 200);
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${port} (database ${new URL(database).host})`);
});

process.on("SIGTERM", () => {
  console.log(`SIGTERM: finishing ${inFlight} requests`);
  server.close(() => process.exit(0));
});
