module chatcluster.dev/e2e/node/ociimage

go 1.26.0
