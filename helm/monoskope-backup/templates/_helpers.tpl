{{- define "mbk.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mbk.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mbk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mbk.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mbk.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mbk.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mbk.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "mbk.backupSecret" -}}
{{- .Values.backup.existingSecretName | default (printf "%s-backup" (include "mbk.fullname" .)) -}}
{{- end -}}

{{- define "mbk.tokenSecret" -}}
{{- .Values.backup.tokenSecretName | default (printf "%s-token" (include "mbk.fullname" .)) -}}
{{- end -}}

{{/* The service's URL for backupctl. */}}
{{- define "mbk.serverUrl" -}}
{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}://{{ include "mbk.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.service.port }}
{{- end -}}

{{/* A backupctl container's common part: token from a Secret file, CA when TLS is on. */}}
{{- define "mbk.backupctlEnv" -}}
- name: BACKUP_SERVER
  value: {{ include "mbk.serverUrl" . | quote }}
- name: BACKUP_TOKEN_FILE
  value: /var/run/secrets/monoskope-backup/token
{{- if .Values.tls.enabled }}
- name: BACKUP_SERVER_CA
  value: /var/run/secrets/monoskope-backup/tls/ca.crt
{{- end }}
{{- end -}}

{{- define "mbk.backupctlMounts" -}}
- name: token
  mountPath: /var/run/secrets/monoskope-backup
  readOnly: true
{{- if .Values.tls.enabled }}
- name: server-ca
  mountPath: /var/run/secrets/monoskope-backup/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "mbk.backupctlVolumes" -}}
- name: token
  secret:
    secretName: {{ include "mbk.tokenSecret" . }}
    items:
      - key: token
        path: token
{{- if .Values.tls.enabled }}
- name: server-ca
  secret:
    secretName: {{ .Values.tls.secretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{/*
A postgres:// URL with a client certificate and no password, from a `postgres` values block
(host, port, database, user, sslmode, clientCertSecretName) and the directory its Secret is
mounted at: (dict "db" .Values.eventStore.eventsDb "dir" "/etc/monoskope-backup/events-db").
*/}}
{{- define "mbk.pgUrl" -}}
{{- $db := .db -}}
postgres://{{ $db.user | urlquery }}@{{ $db.host }}:{{ $db.port }}/{{ $db.database | urlquery }}?sslmode={{ $db.sslmode }}
{{- if $db.clientCertSecretName -}}
&sslrootcert={{ .dir }}/ca.crt&sslcert={{ .dir }}/tls.crt&sslkey={{ .dir }}/tls.key
{{- end -}}
{{- end -}}
