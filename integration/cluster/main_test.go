// Package cluster runs tests against a real 3-node RabbitMQ cluster that
// harness.ClusterMain starts beside the default node, once per run of the
// package, and tears down afterwards.
package cluster

import (
	"os"
	"testing"

	"github.com/stalk-dev/stalk/integration/harness"
)

// cluster is the package's cluster, running for the whole of m.Run.
var cluster *harness.Cluster

func TestMain(m *testing.M) {
	os.Exit(harness.ClusterMain(m, func(c *harness.Cluster) error {
		cluster = c
		return nil
	}))
}
