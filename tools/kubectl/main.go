// Command kubectl is upstream's k8s.io/kubernetes/cmd/kubectl/kubectl.go without
// the blank import of k8s.io/client-go/plugin/pkg/client/auth (cloud login
// plugins; the tests use a static token).
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		// Pretty-print the error and exit with an error.
		util.CheckErr(err)
	}
}
