{{/*
The proxy's container and its volumes, as named templates. The chart's own
Deployment uses them, and so can a legacy application's chart, to run the
proxy as a sidecar in the application's pod, on the same origin.

In the application's chart, with this chart as a dependency (in its
charts/ directory), pass this chart's own context, which carries its
values as the application's values override them:

  spec:
    template:
      metadata:
        annotations:
          {{- include "kstats-proxy.podAnnotations" (index .Subcharts "kstats-proxy") | nindent 10 }}
      spec:
        terminationGracePeriodSeconds: 35
        containers:
          - name: moodle
            image: moodle:4.1
          {{- include "kstats-proxy.sidecarContainer" (index .Subcharts "kstats-proxy") | nindent 10 }}
        volumes:
          {{- include "kstats-proxy.sidecarVolumes" (index .Subcharts "kstats-proxy") | nindent 10 }}

and set `kstats-proxy.mode: sidecar` in the application's values. The
container and volume names start with "kstats-" so as not to clash with the
application's; its ports are containerPorts.http and containerPorts.admin.
*/}}
{{- define "kstats-proxy.sidecarContainer" -}}
- name: kstats-proxy
  image: {{ include "kstats-proxy.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- with .Values.proxy.extraArgs }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    # the defaults of the image, written out so that the pod says them
    - name: KSTATS_LISTEN
      value: {{ printf "0.0.0.0:%d" (int .Values.containerPorts.http) | quote }}
    - name: KSTATS_ADMIN_LISTEN
      value: {{ printf "0.0.0.0:%d" (int .Values.containerPorts.admin) | quote }}
    - name: KSTATS_RULES
      value: /etc/kstats/rules
    - name: KSTATS_SPOOL
      value: /var/spool/kstats
    - name: KSTATS_UPSTREAM
      value: {{ .Values.proxy.upstream | quote }}
    - name: KSTATS_LOG_LEVEL
      value: {{ .Values.proxy.logLevel | quote }}
    - name: KSTATS_LOG_FORMAT
      value: {{ .Values.proxy.logFormat | quote }}
    - name: KSTATS_GRACE_PERIOD
      value: {{ .Values.proxy.gracePeriod | quote }}
    - name: KSTATS_RELOAD_INTERVAL
      value: {{ .Values.proxy.reloadInterval | quote }}
    - name: KSTATS_SPOOL_MAX_BYTES
      value: {{ .Values.proxy.spoolMaxBytes | int64 | quote }}
    - name: KSTATS_TRUSTED_PROXIES
      value: {{ .Values.proxy.trustedProxies | quote }}
    {{- with .Values.proxy.forwardCookies }}
    - name: KSTATS_FORWARD_COOKIES
      value: {{ . | quote }}
    {{- end }}
    {{- with include "kstats-proxy.adminSecretFile" . }}
    - name: KSTATS_ADMIN_SECRET_FILE
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: kstats-http
      containerPort: {{ .Values.containerPorts.http }}
      protocol: TCP
    - name: kstats-admin
      containerPort: {{ .Values.containerPorts.admin }}
      protocol: TCP
  # /healthz answers while the process serves; /readyz once the rules are
  # loaded and until a drain begins
  livenessProbe:
    httpGet:
      path: /healthz
      port: kstats-admin
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: kstats-admin
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  {{- if .Values.preStopSleepSeconds }}
  lifecycle:
    # endpoints and the ingress learn of the stop while the proxy still
    # serves; only then does SIGTERM start its drain
    preStop:
      exec:
        command: ["sleep", {{ .Values.preStopSleepSeconds | quote }}]
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- if include "kstats-proxy.rulesConfigMap" . }}
    # the whole directory, never subPath: a subPath mount would not follow
    # the ConfigMap's updates, and the proxy could not reload them
    - name: kstats-rules
      mountPath: /etc/kstats/rules
      readOnly: true
    {{- end }}
    - name: kstats-spool
      mountPath: /var/spool/kstats
    {{- if include "kstats-proxy.secretName" . }}
    - name: kstats-secrets
      mountPath: /etc/kstats/secrets
      readOnly: true
    {{- end }}
{{- end }}

{{- define "kstats-proxy.sidecarVolumes" -}}
{{- include "kstats-proxy.volumeList" . | trim }}
{{- end }}

{{- define "kstats-proxy.volumeList" -}}
{{- with include "kstats-proxy.rulesConfigMap" . }}
- name: kstats-rules
  configMap:
    name: {{ . }}
{{- end }}
- name: kstats-spool
{{- if .Values.spool.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-spool" (include "kstats-proxy.fullname" .)) .Values.spool.persistence.existingClaim }}
{{- else }}
  emptyDir:
    {{- with .Values.spool.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
{{- with include "kstats-proxy.secretName" . }}
- name: kstats-secrets
  secret:
    secretName: {{ . }}
    # readable in the proxy's container whatever the pod's fsGroup, which a
    # sidecar does not choose
    defaultMode: 0444
{{- end }}
{{- end }}
