{{/*
Name of the chart, or nameOverride.
*/}}
{{- define "ests.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: fullnameOverride, or the release name when it already
contains the chart name (release "ests" gives "ests"), or "<release>-<chart>".
Kept short enough for "-controller-metrics" and friends.
*/}}
{{- define "ests.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "ests.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "ests.labels" -}}
helm.sh/chart: {{ include "ests.chart" . }}
app.kubernetes.io/name: {{ include "ests.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ests
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of one component: include with (dict "ctx" $ "component" "controller").
*/}}
{{- define "ests.componentLabels" -}}
{{ include "ests.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component (never change: Deployment selectors are immutable).
*/}}
{{- define "ests.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ests.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Name of a component's objects (Deployment, ServiceAccount, Service): "<fullname>-<component>".
*/}}
{{- define "ests.componentName" -}}
{{- printf "%s-%s" (include "ests.fullname" .ctx) .component }}
{{- end }}

{{/*
Values keys of the components that run, as a comma-separated string: the StaticIP manager
runs as its own Deployment only when the controller does not run it.
*/}}
{{- define "ests.componentKeys" -}}
controller,webhook,extender{{ if not .Values.controller.staticIPManager }},staticIP{{ end }}
{{- end }}

{{/*
Object name suffix of a component's values key.
*/}}
{{- define "ests.componentOf" -}}
{{- if eq . "staticIP" }}static-ip{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
RBAC rules of the StaticIP manager (crates/staticip), in the controller's role or its own.
*/}}
{{- define "ests.staticIPManagerRules" -}}
# Records: learnt, bound and released (a release re-reads the record and deletes it at the
# version it judged).
- apiGroups: ["jke.jdcloud.com"]
  resources: ["staticips"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["jke.jdcloud.com"]
  resources: ["staticips/status"]
  verbs: ["patch"]
# Static-IP pods are watched; a release first asks the API server whether the pod exists;
# a pod pinned to a deleted node, never scheduled, is deleted (by UID) to be re-created.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# Node names: a deleted node's records are placed afresh and its empty blocks go back to
# the pool, once a GET confirms the node is gone.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["jke.jdcloud.com"]
  resources: ["enhancedstatefulsets"]
  verbs: ["list", "watch"]
# IP range mode: blocks are the allocator's compare-and-swap store (replace at a
# resourceVersion); the sweeper patches their status; a deleted pool's free blocks are
# deleted (at the resourceVersion judged free).
- apiGroups: ["jke.jdcloud.com"]
  resources: ["ipblocks"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
- apiGroups: ["jke.jdcloud.com"]
  resources: ["ipblocks/status"]
  verbs: ["patch"]
# Pools carry the manager's finalizer until their addresses are released.
- apiGroups: ["jke.jdcloud.com"]
  resources: ["staticippools"]
  verbs: ["list", "watch", "patch"]
{{- end }}

{{/*
Subject alternative names of the serving certificate: the webhook's Service, the extender's
when it serves HTTPS, and the extra ones.
*/}}
{{- define "ests.certificateDNSNames" -}}
{{- $names := list }}
{{- $components := list "webhook" }}
{{- if .Values.extender.tls.enabled }}{{ $components = append $components "extender" }}{{ end }}
{{- range $components }}
{{- $name := include "ests.componentName" (dict "ctx" $ "component" .) }}
{{- $names = concat $names (list $name (printf "%s.%s" $name $.Release.Namespace) (printf "%s.%s.svc" $name $.Release.Namespace) (printf "%s.%s.svc.cluster.local" $name $.Release.Namespace)) }}
{{- end }}
{{- concat $names .Values.webhook.tls.extraDNSNames | toJson }}
{{- end }}

{{/*
IP subject alternative names of the serving certificate: the extender's fixed ClusterIP when
it serves HTTPS (the scheduler's configuration then names it by that address, and a
host-network kube-scheduler checks the certificate against it), and the extra ones.
*/}}
{{- define "ests.certificateIPAddresses" -}}
{{- $ips := list }}
{{- if and .Values.extender.tls.enabled .Values.extender.service.clusterIP (not .Values.extender.url) }}
{{- $ips = append $ips .Values.extender.service.clusterIP }}
{{- end }}
{{- concat $ips .Values.webhook.tls.extraIPAddresses | uniq | toJson }}
{{- end }}

{{/*
The chart-made CA and serving certificate (webhook, and extender with extender.tls), made
once per render and cached in .Values: a dict of base64 "ca.crt", "tls.crt", "tls.key" and
the "sans" they were made for. An existing Secret is kept on upgrade unless
webhook.tls.regenerate is set or the names it must carry changed.
*/}}
{{- define "ests.certificates" -}}
{{- if not (hasKey .Values "__estsCertificates") }}
{{- $tls := .Values.webhook.tls }}
{{- $dnsNames := include "ests.certificateDNSNames" . | fromJsonArray }}
{{- $ips := include "ests.certificateIPAddresses" . | fromJsonArray }}
{{- $sans := printf "%s|%s" (join "," $dnsNames) (join "," $ips) | sha256sum | trunc 16 }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "ests.webhookSecret" .) }}
{{- $data := dict }}
{{- if and $existing (not $tls.regenerate) }}
{{- $annotations := $existing.metadata.annotations | default dict }}
{{- if eq (index $annotations "jke.jdcloud.com/certificate-names" | default "") $sans }}
{{- $data = $existing.data | default dict }}
{{- end }}
{{- end }}
{{- if not (and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key")) }}
{{- $name := include "ests.componentName" (dict "ctx" . "component" "webhook") }}
{{- $ca := genCA (printf "%s-ca" (include "ests.fullname" .)) (int $tls.validityDays) }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $name .Release.Namespace) $ips $dnsNames (int $tls.validityDays) $ca }}
{{- $data = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values "__estsCertificates" (merge (dict "sans" $sans) $data) }}
{{- end }}
{{- end }}

{{/*
The client CA and kube-scheduler's client certificate for the extender
(extender.tls.clientAuth), made once per render and cached in .Values: a dict of base64
"ca.crt", "tls.crt", "tls.key". An existing Secret is kept on upgrade.
*/}}
{{- define "ests.schedulerClientCertificates" -}}
{{- if not (hasKey .Values "__estsSchedulerClient") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "ests.schedulerClientSecret" .) }}
{{- $data := dict }}
{{- if $existing }}
{{- $data = $existing.data | default dict }}
{{- end }}
{{- if not (and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key")) }}
{{- $days := int .Values.webhook.tls.validityDays }}
{{- $ca := genCA (printf "%s-scheduler-client-ca" (include "ests.fullname" .)) $days }}
{{- $cert := genSignedCert "system:kube-scheduler" nil nil $days $ca }}
{{- $data = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values "__estsSchedulerClient" $data }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding kube-scheduler's client certificate for the extender.
*/}}
{{- define "ests.schedulerClientSecret" -}}
{{- printf "%s-scheduler-client" (include "ests.fullname" .) }}
{{- end }}

{{/*
Whether kube-scheduler authenticates to the extender with a client certificate.
*/}}
{{- define "ests.extenderClientAuth" -}}
{{- if and .Values.extender.tls.enabled .Values.extender.tls.clientAuth.enabled }}true{{ end }}
{{- end }}

{{/*
The CA that signed the serving certificate, base64: chart-made, or extender.tls.caData with
cert-manager (its CA injector fills webhook configurations, not ConfigMaps).
*/}}
{{- define "ests.caData" -}}
{{- if .Values.webhook.tls.certManager.enabled }}
{{- required "extender.tls.caData (the base64 PEM CA of cert-manager's issuer) is required with extender.tls.enabled and webhook.tls.certManager.enabled" .Values.extender.tls.caData }}
{{- else }}
{{- include "ests.certificates" . }}
{{- index .Values.__estsCertificates "ca.crt" }}
{{- end }}
{{- end }}

{{/*
The ests image.
*/}}
{{- define "ests.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Username of the controller's ServiceAccount: the only creator of static-IP pods.
*/}}
{{- define "ests.controllerUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "ests.componentName" (dict "ctx" . "component" "controller")) }}
{{- end }}

{{/*
Name of the controller's leader-election Lease.
*/}}
{{- define "ests.controllerLease" -}}
{{- include "ests.componentName" (dict "ctx" . "component" "controller") }}
{{- end }}

{{/*
Name of the Secret holding the webhook's serving certificate.
*/}}
{{- define "ests.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "ests.fullname" .) }}
{{- end }}

{{/*
Where kube-scheduler reaches the extender.
*/}}
{{- define "ests.extenderURL" -}}
{{- if .Values.extender.url }}
{{- .Values.extender.url | trimSuffix "/" }}
{{- else if .Values.extender.service.clusterIP }}
{{- printf "%s://%s:%v" (ternary "https" "http" .Values.extender.tls.enabled) .Values.extender.service.clusterIP .Values.extender.port }}
{{- else }}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" .Values.extender.tls.enabled) (include "ests.componentName" (dict "ctx" . "component" "extender")) .Release.Namespace .Values.extender.port }}
{{- end }}
{{- end }}

{{/*
The extenders list of a KubeSchedulerConfiguration (same as config/scheduler).
*/}}
{{- define "ests.schedulerExtenders" -}}
extenders:
- urlPrefix: {{ include "ests.extenderURL" . }}
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 1
  nodeCacheCapable: true
  httpTimeout: {{ .Values.extender.httpTimeout }}
  ignorable: {{ .Values.extender.ignorable }}
  {{- include "ests.extenderTLS" . }}
{{- if .Values.extender.bind }}
- urlPrefix: {{ include "ests.extenderURL" . }}
  bindVerb: bind
  nodeCacheCapable: true
  httpTimeout: {{ .Values.extender.bindHTTPTimeout }}
  ignorable: false
  managedResources:
  - name: jke.jdcloud.com/static-ip
    ignoredByScheduler: true
  {{- include "ests.extenderTLS" . }}
{{- end }}
{{- end }}

{{/*
HTTPS settings of an extender entry: the scheduler checks the extender's certificate and,
with extender.tls.clientAuth, presents its own.
*/}}
{{- define "ests.extenderTLS" -}}
{{- if .Values.extender.tls.enabled }}
  enableHTTPS: true
  tlsConfig:
    caData: {{ include "ests.caData" . }}
    {{- if include "ests.extenderClientAuth" . }}
    certFile: {{ .Values.extender.tls.clientAuth.schedulerCertDir }}/scheduler-client.crt
    keyFile: {{ .Values.extender.tls.clientAuth.schedulerCertDir }}/scheduler-client.key
    {{- end }}
{{- end }}
{{- end }}

{{/*
Pod anti-affinity spreading a component's replicas over nodes:
(dict "ctx" $ "component" "webhook" "mode" "soft").
*/}}
{{- define "ests.antiAffinity" -}}
podAntiAffinity:
{{- if eq .mode "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "ests.selectorLabels" . | nindent 10 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "ests.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}

{{/*
Env of every ests container: its pod's name and namespace (leader identity, Lease
namespace) and the log settings.
*/}}
{{- define "ests.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: ESTS_LOG
  value: {{ .Values.logLevel | quote }}
- name: ESTS_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{/*
Which CNI gives pods their addresses (cni.integration): as set, else `custom` when
cniAnnotations is set, else `ests` when the chart runs ests's own CNI (node.enabled), else
`calico` (the chart's behaviour before the node agent, so existing installs keep it).
*/}}
{{- define "ests.cniIntegration" -}}
{{- if .Values.cni.integration }}
{{- .Values.cni.integration }}
{{- else if .Values.cniAnnotations }}custom
{{- else if .Values.node.enabled }}ests
{{- else }}calico
{{- end }}
{{- end }}

{{/*
The CNI annotations the webhook and the extender's bind write, as a JSON list of `key=format`
(ests_core::pin::cni_annotations reads the same from --cni-annotation): empty under `ests`.
*/}}
{{- define "ests.cniAnnotations" -}}
{{- $integration := include "ests.cniIntegration" . }}
{{- if eq $integration "calico" }}
{{- list "cni.projectcalico.org/ipAddrs={ips-json}" | toJson }}
{{- else if eq $integration "ests" }}
{{- list | toJson }}
{{- else if .Values.cniAnnotations }}
{{- .Values.cniAnnotations | toJson }}
{{- else }}
{{- fail "cni.integration custom needs cniAnnotations (key=format entries)" }}
{{- end }}
{{- end }}

{{/*
The --cni-annotation flags of the webhook and the extender: one per annotation, or `none`.
*/}}
{{- define "ests.cniAnnotationArgs" -}}
{{- $annotations := include "ests.cniAnnotations" . | fromJsonArray }}
{{- if $annotations }}
{{- range $annotations }}
- --cni-annotation={{ . }}
{{- end }}
{{- else }}
- --cni-annotation=none
{{- end }}
{{- end }}
