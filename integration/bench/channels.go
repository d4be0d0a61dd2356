package main

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// brokerChannels counts, with rabbitmqctl, the AMQP channels open on the
// connections whose connection_name starts with prefix. It returns the
// number of matching connections too.
func brokerChannels(ctx context.Context, prefix string) (channels, conns int, err error) {
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "list_connections", "--no-table-headers",
		"client_properties", "channels").CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("rabbitmqctl list_connections: %w: %s", err, strings.TrimSpace(string(out)))
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, ok := connectionName(line)
		if !ok || !strings.HasPrefix(name, prefix) {
			continue
		}
		tab := strings.LastIndexByte(line, '\t')
		n, err := strconv.Atoi(strings.TrimSpace(line[tab+1:]))
		if err != nil {
			return 0, 0, fmt.Errorf("rabbitmqctl: unexpected line %q", line)
		}
		channels += n
		conns++
	}
	return channels, conns, nil
}

// connectionName extracts connection_name from rabbitmqctl's Erlang-ish
// rendering of client_properties: {"connection_name","x"}.
func connectionName(line string) (string, bool) {
	const key = `{"connection_name","`
	i := strings.Index(line, key)
	if i < 0 {
		return "", false
	}
	rest := line[i+len(key):]
	j := strings.Index(rest, `"}`)
	if j < 0 {
		return "", false
	}
	return rest[:j], true
}
