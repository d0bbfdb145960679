// Command daprd is a slim build of the Dapr sidecar runtime
// (github.com/dapr/dapr cmd/daprd) for the AutoGLM Mesh project.
//
// Upstream daprd is built with `-tags allcomponents`, which links every
// component in components-contrib. This wrapper runs the same entry point as
// upstream (app.go, copied from cmd/daprd/app) but registers only the
// components the project uses; see components.go.
//
// The version printed by `daprd --version` is injected by tools/build.sh via
// -ldflags "-X github.com/dapr/dapr/pkg/buildinfo.version=<version>".
package main

func main() {
	runDaprd()
}
