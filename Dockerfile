# syntax=docker/dockerfile:1
# The image of monoskope-backup: `backup-server` (the service and its one-shot commands) and
# `backupctl` (the CLI the chart's CronJob and restore Job run). Not built in this repository's
# CI (no container runtime there); build with `docker build -t monoskope-backup .`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p monoskope-backup -p monoskope-backup-client \
 && install -D -m 0755 target/release/backup-server /out/backup-server \
 && install -D -m 0755 target/release/backupctl /out/backupctl

# glibc, CA certificates, no shell; runs as UID 65532 (the chart's default).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 50051 9102
ENTRYPOINT ["backup-server"]
CMD ["serve"]
