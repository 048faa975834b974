#!/usr/bin/env bash
# Starts the local PostgreSQL, MariaDB and Redis the tests use, where they are installed but not running.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 6379 && command -v redis-server >/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp >/dev/null
fi
if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! up 3306 && [ -x /usr/sbin/mariadbd ]; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
for i in $(seq 1 30); do
  if up 6379 && up 5432 && up 3306; then exit 0; fi
  sleep 1
done
echo "services.sh: some of Redis (6379), PostgreSQL (5432), MariaDB (3306) are not up; their tests will say so" >&2
