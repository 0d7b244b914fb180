//go:build tools

// Package etcd only pins the etcd server built by e2e/k8s/build-control-plane.sh.
package etcd

import _ "go.etcd.io/etcd/server/v3"
