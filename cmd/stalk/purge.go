package main

import (
	"bufio"
	"context"
	"fmt"
	"sort"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/internal/broker"
)

func (a *app) purgeCommand() *cobra.Command {
	var (
		queues, exclude []string
		force           bool
	)
	cmd := &cobra.Command{
		Use:   "purge [flags]",
		Short: "Delete every task waiting in task queues (celery purge)",
		Long: `Delete every message waiting in the given task queues: tasks no worker has
received yet. Tasks a worker has already received (running, reserved, or
held for an ETA) are not affected. There is no undo.

Without -Q it purges the default queue ($STALK_DEFAULT_QUEUE, else "celery").
purge shows how many tasks each queue holds and asks for confirmation on
stderr, reading the answer from stdin; -f/--force skips the question. A queue
that does not exist is skipped.

Exit status: 0 purged (or nothing to purge), 1 not confirmed, 2 usage error,
4 broker unreachable.`,
		Example: `  stalk purge
  stalk purge -Q reports,emails
  stalk purge -Q reports -f
  stalk -j purge -Q reports -f | jq .purged`,
		Args: noArgs("purge", "name the queues with -Q/--queues"),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			names := map[string]bool{}
			for _, q := range queues {
				if q = strings.TrimSpace(q); q != "" {
					names[q] = true
				}
			}
			if len(names) == 0 {
				def := strings.TrimSpace(a.getenv("STALK_DEFAULT_QUEUE"))
				if def == "" {
					def = "celery"
				}
				names[def] = true
			}
			for _, q := range exclude {
				delete(names, strings.TrimSpace(q))
			}
			if len(names) == 0 {
				return usagef("every queue is excluded: nothing to purge")
			}
			return a.runPurge(cmd.Context(), sortedKeys(names), force)
		}),
	}
	fs := cmd.Flags()
	fs.StringSliceVarP(&queues, "queues", "Q", nil, "the `queues` to purge, comma-separated or repeated (default: the default queue)")
	fs.StringSliceVarP(&exclude, "exclude-queues", "X", nil, "`queues` not to purge")
	fs.BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	return cmd
}

type jsonPurged struct {
	Event  string        `json:"event"` // "purged"
	Purged int           `json:"purged"`
	Queues []jsonPurgedQ `json:"queues"`
}

type jsonPurgedQ struct {
	Queue   string `json:"queue"`
	Exists  bool   `json:"exists"`
	Purged  int    `json:"purged"`
	Waiting int    `json:"waiting_before"`
}

func (a *app) runPurge(ctx context.Context, names []string, force bool) error {
	cctx, cancel := context.WithTimeout(ctx, a.g.connectTimeout)
	conn, err := broker.Dial(cctx, broker.Config{URL: a.url(), Name: "stalk-cli-purge", Logger: a.log})
	cancel()
	if err != nil {
		return a.connectError(ctx, err)
	}
	a.connected()
	defer conn.Close()
	ac, err := conn.Connection(ctx)
	if err != nil {
		return a.connectError(ctx, err)
	}
	out := jsonPurged{Event: "purged", Queues: []jsonPurgedQ{}}
	var present []string
	total := 0
	for _, q := range names {
		info, ok, err := broker.QueueExistsOn(ac, q)
		if err != nil {
			return fmt.Errorf("look up queue %s: %w", q, err)
		}
		out.Queues = append(out.Queues, jsonPurgedQ{Queue: q, Exists: ok, Waiting: info.Messages})
		if !ok {
			if !a.g.json {
				fmt.Fprintf(a.stderr, "queue %s does not exist; skipped\n", q)
			}
			continue
		}
		present = append(present, q)
		total += info.Messages
	}
	if len(present) == 0 {
		if a.g.json {
			a.jsonLine(out)
		} else {
			fmt.Fprintln(a.stdout, "No queue to purge.")
		}
		return nil
	}
	if !force {
		var desc []string
		for _, q := range out.Queues {
			if q.Exists {
				desc = append(desc, fmt.Sprintf("%s (%s waiting)", q.Queue, plural(q.Waiting, "task", "tasks")))
			}
		}
		fmt.Fprintf(a.stderr, "This deletes every task waiting in %s: %s.\nIt cannot be undone (-f skips this question). Delete them? [y/N] ",
			plural(len(present), "queue", "queues"), strings.Join(desc, ", "))
		answer, _ := bufio.NewReader(a.stdin).ReadString('\n')
		if !a.stdinTTY {
			// Nothing echoed the answer: end the prompt's line.
			fmt.Fprintln(a.stderr, strings.TrimSpace(answer))
		}
		switch strings.ToLower(strings.TrimSpace(answer)) {
		case "y", "yes":
		default:
			return fmt.Errorf("not confirmed: nothing purged")
		}
	}
	purged := 0
	for i, q := range out.Queues {
		if !q.Exists {
			continue
		}
		n, err := purgeQueue(ac, q.Queue)
		if err != nil {
			return fmt.Errorf("purge %s: %w", q.Queue, err)
		}
		out.Queues[i].Purged = n
		purged += n
	}
	out.Purged = purged
	if a.g.json {
		a.jsonLine(out)
		return nil
	}
	sort.Strings(present)
	if purged == 0 {
		fmt.Fprintf(a.stdout, "No tasks purged from %s: %s.\n", plural(len(present), "queue", "queues"), strings.Join(present, ", "))
	} else {
		fmt.Fprintf(a.stdout, "Purged %s from %s: %s.\n", plural(purged, "task", "tasks"), plural(len(present), "queue", "queues"), strings.Join(present, ", "))
	}
	return nil
}

// purgeQueue purges one queue on a channel of its own: a channel error
// (the queue deleted meanwhile) closes only that channel.
func purgeQueue(conn *amqp091.Connection, name string) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	return ch.QueuePurge(name, false)
}
