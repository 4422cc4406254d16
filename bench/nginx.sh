# Sourced by the bench scripts: the baseline kirana's rates are compared with, nginx serving files
# from a temporary root with one worker.
#
#   nginx_start PORT   sets NGX (the files go in $NGX/www) and starts nginx on 127.0.0.1:PORT
#   nginx_stop         stops it (safe to call when it is not running)

nginx_start() {
  NGX=$(mktemp -d); mkdir -p "$NGX/www" "$NGX/logs"; chmod 755 "$NGX" "$NGX/www"  # nginx workers drop root
  cat > "$NGX/nginx.conf" <<CONF
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  types { application/json json; text/html html; }
  server {
    listen 127.0.0.1:$1;
    location / { root $NGX/www; }
  }
}
CONF
  nginx -c "$NGX/nginx.conf"
}

nginx_stop() {
  if [ -n "${NGX:-}" ] && [ -f "$NGX/nginx.pid" ]; then nginx -c "$NGX/nginx.conf" -s stop 2>/dev/null || true; fi
}
