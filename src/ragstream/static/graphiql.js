// Starts GraphiQL on ragstream's /graphql page: operations go over HTTP POST to the page's own
// URL, subscriptions over a graphql-transport-ws socket to the same URL. The Headers tab holds
// the access token ({"Authorization": "Bearer ..."}); GraphiQL sends it on HTTP requests and as
// the socket's connection_init payload, and keeps it in this browser's local storage.
(function () {
  "use strict";

  var endpoint = new URL(window.location.pathname, window.location.origin);
  var socket = new URL(endpoint.href);
  socket.protocol = endpoint.protocol === "https:" ? "wss:" : "ws:";

  var firstQuery = [
    "# 1. Sign in (or use `register`) and copy the accessToken:",
    "#",
    '#      mutation { login(email: "you@example.com", password: "...") { accessToken } }',
    "#",
    "# 2. Put it in the Headers tab below:",
    "#",
    '#      { "Authorization": "Bearer <accessToken>" }',
    "#",
    "# 3. Run queries, mutations and subscriptions (chat answers stream here).",
    "",
    "query Me {",
    "  me { id email displayName role }",
    "}",
    "",
  ].join("\n");

  var element = window.React.createElement(window.GraphiQL, {
    fetcher: window.GraphiQL.createFetcher({
      url: endpoint.href,
      subscriptionUrl: socket.href,
    }),
    defaultQuery: firstQuery,
    plugins: [window.GraphiQLPluginExplorer.explorerPlugin()],
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: true,
    defaultEditorToolsVisibility: "headers",
    inputValueDeprecation: true,
  });
  window.ReactDOM.createRoot(document.getElementById("graphiql")).render(element);
})();
