// Package harness runs stalk's integration tests against a real RabbitMQ
// and real Celery workers.
//
// Main is called from each test package's TestMain. It checks that the
// broker answers; if it does not, the tests are skipped with a clear
// message, or fail when STALK_REQUIRE_BROKER=1 (as CI sets). It also takes a
// lock shared by every test binary, so that the suites which stop or
// restart the broker (which take it exclusively) never run beside the
// others.
//
// StartWorker starts a Celery worker (/usr/bin/python3 -m celery, from
// Debian's python3-celery) on a queue of the test run's own, with the
// tasks in celeryapp/tasks.py, and waits until it is ready.
package harness
