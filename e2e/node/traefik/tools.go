//go:build tools

// Package traefik only pins the command built by e2e/node/build-node.sh.
package traefik

import (
	_ "github.com/traefik/traefik/v3/cmd/traefik"
)
