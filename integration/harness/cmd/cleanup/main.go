// Command cleanup deletes the queues and exchanges that earlier test and
// benchmark runs left on the broker: every name that starts with
// "stalk-test-" or "stalk-bench-". Per-task reply queues keep their final
// state until they expire, so a busy CI broker collects thousands of them,
// and a broker with many queues restarts slowly. .ci/run calls it before
// the tests.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/integration/harness"
)

var prefixes = []string{"stalk-test-", "stalk-bench-"}

func main() {
	dry := flag.Bool("n", false, "list what would be deleted, delete nothing")
	flag.Parse()
	if err := run(*dry); err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
		os.Exit(1)
	}
}

func run(dry bool) error {
	queues, err := list("list_queues", "name")
	if err != nil {
		return err
	}
	exchanges, err := list("list_exchanges", "name")
	if err != nil {
		return err
	}
	if dry {
		fmt.Printf("would delete %d queues and %d exchanges\n", len(queues), len(exchanges))
		return nil
	}
	conn, err := amqp091.Dial(harness.BrokerURL())
	if err != nil {
		return err
	}
	defer conn.Close()
	nq, err := deleteEach(conn, queues, func(ch *amqp091.Channel, name string) error {
		_, err := ch.QueueDelete(name, false, false, false)
		return err
	})
	if err != nil {
		return err
	}
	nx, err := deleteEach(conn, exchanges, func(ch *amqp091.Channel, name string) error {
		return ch.ExchangeDelete(name, false, false)
	})
	if err != nil {
		return err
	}
	fmt.Printf("deleted %d leftover test queues and %d exchanges\n", nq, nx)
	return nil
}

// deleteEach deletes every name with del and returns how many went. A
// failed deletion (the name vanished meanwhile) closes the channel, so the
// next name gets a new one.
func deleteEach(conn *amqp091.Connection, names []string, del func(*amqp091.Channel, string) error) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, name := range names {
		if err := del(ch, name); err != nil {
			if ch, err = conn.Channel(); err != nil {
				return deleted, err
			}
			continue
		}
		deleted++
	}
	_ = ch.Close()
	return deleted, nil
}

// list runs rabbitmqctl and returns the names with a test prefix.
func list(args ...string) ([]string, error) {
	out, err := exec.Command("rabbitmqctl", append(args, "--quiet", "--no-table-headers")...).Output()
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				names = append(names, name)
				break
			}
		}
	}
	return names, sc.Err()
}
