// Package revoke is Celery's remote control over the celery.pidbox fanout
// exchange: revoke, revoke_by_stamped_headers, ping and inspect, with
// replies collected from reply.celery.pidbox and matched by ticket.
package revoke
