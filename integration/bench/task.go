package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// embedNull is the embed object every task body carries (PROTOCOL §2.1).
const embedNull = `{"callbacks":null,"errbacks":null,"chain":null,"chord":null}`

var origin = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("gen%d@%s", os.Getpid(), host)
}()

// taskMessage builds the protocol v2 message for tasks.echo(i), with the
// same headers and the same body bytes as stalk's amqp.Send builds (lang
// "go", compact JSON), for the plain amqp091-go loop (the floor).
func taskMessage(id, replyTo string, i int) amqp091.Publishing {
	n := strconv.Itoa(i)
	body := make([]byte, 0, 96)
	body = append(body, "[["...)
	body = append(body, n...)
	body = append(body, "],{},"...)
	body = append(body, embedNull...)
	body = append(body, ']')
	return amqp091.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Persistent,
		Priority:        0,
		CorrelationId:   id,
		ReplyTo:         replyTo,
		Headers: amqp091.Table{
			"lang":          "go",
			"task":          "tasks.echo",
			"id":            id,
			"shadow":        nil,
			"eta":           nil,
			"expires":       nil,
			"group":         nil,
			"group_index":   nil,
			"retries":       int32(0),
			"timelimit":     []any{nil, nil},
			"root_id":       id,
			"parent_id":     nil,
			"argsrepr":      "(" + n + ",)",
			"kwargsrepr":    "{}",
			"origin":        origin,
			"ignore_result": false,
			// Celery 5.3+ clients send these three; so does stalk.
			"replaced_task_nesting": int32(0),
			"stamped_headers":       nil,
			"stamps":                amqp091.Table{},
		},
		Body: body,
	}
}

// latencies summarises sequential round trips.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(p*float64(len(s)-1) + 0.5)
	return s[k]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
