module autoglm-mesh/tools/dapr-cli

go 1.26.4

// Builds the `dapr` CLI (main package = module root of github.com/dapr/cli):
//   go build -ldflags "-X main.version=1.18.0 -X main.apiVersion=1.0" github.com/dapr/cli
// github.com/dapr/cli v1.18.0 declares no active replace directives.
//
// NOTE: the module proxy reachable here serves v1.18.0's .info/.mod but
// answers 403 for its source .zip, so no go.sum can be generated and the
// build fails until the proxy serves it. See tools/build.sh (target `dapr`).

tool github.com/dapr/cli

require github.com/dapr/cli v1.18.0
