//go:build tools

// Package keda only pins the commands built by e2e/node/build-node.sh: KEDA's operator
// and its metrics API server (the "adapter").
package keda

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
