// Runs the graphql-http audit suite (auditServer) against a GraphQL endpoint and prints
// one JSON object per audit: {id, name, status, reason}. Usage: node graphql_http_audit.cjs URL
// The graphql-http package is found through NODE_PATH (see tests/test_graphql_http.py).
const { auditServer } = require("graphql-http");

async function main() {
  const url = process.argv[2];
  const results = await auditServer({ url });
  const lines = [];
  for (const result of results) {
    let reason = result.reason || null;
    if (result.response) {
      try {
        const body = await result.response.text();
        reason = `${reason} [${result.response.status} ${result.response.headers.get("content-type")}] ${body.slice(0, 300)}`;
      } catch (_) {}
    }
    lines.push(JSON.stringify({ id: result.id, name: result.name, status: result.status, reason }));
  }
  process.stdout.write(lines.join("\n") + "\n");
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
