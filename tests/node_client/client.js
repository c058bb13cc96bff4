'use strict';
/**
 * A Node.js checkout service instrumented as a user of flagscope would do it: the
 * OpenTelemetry SDK (traces, logs, metrics) with its own OTLP exporters, and OpenFeature
 * with the OpenTelemetry hooks (SpanHook, EventHook, MetricsHook) and an in-memory
 * provider. tests/test_node_clients.py runs it against a real collector.
 *
 *   node client.js --protocol http/protobuf|http/json|grpc --http http://127.0.0.1:PORT
 *                  --grpc 127.0.0.1:PORT [--token T] [--service NAME] [--requests N]
 *                  [--users U] [--test-every K] [--background B] [--concurrency C]
 *                  [--compression gzip|none] [--payload-bytes P]
 *
 * Each request is a SERVER span `POST /checkout` (http.route, http.request.method,
 * http.response.status_code, enduser.id) in which the flag `new-checkout` is evaluated for
 * the user (its targetingKey) — the SpanHook records a child span `feature_flag.evaluation`,
 * the EventHook a log event — then one log record is emitted. Every K-th request is test
 * traffic (user_agent.synthetic.type=test), and the users `qa-0`, `qa-1` are test users.
 * B evaluations run outside any request, as a background worker's would (root evaluation
 * spans). Metrics: a counter, a histogram, an up-down counter and a gauge carrying
 * feature_flag.key / feature_flag.result.variant, and the MetricsHook's counters, read by a
 * PeriodicExportingMetricReader, exported twice during the run and once on shutdown.
 *
 * Prints one JSON document: what each exporter acknowledged (`exported`: spans, logs and
 * metric data points as sent), what failed (`failures`: the exporter's result error), the
 * diag and global-error-handler messages (`diag`), the variant per user, the requests, and
 * how many spans and log records the SDK ended (to tell a drop in the client's own queue),
 * and how many exports never answered within the export timeout.
 */

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');

const grpc = require('@grpc/grpc-js');
const api = require('@opentelemetry/api');
const apiLogs = require('@opentelemetry/api-logs');
const { ExportResultCode, setGlobalErrorHandler } = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { NodeTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');
const {
  MeterProvider,
  PeriodicExportingMetricReader,
  DataPointType,
} = require('@opentelemetry/sdk-metrics');
const semconv = require('@opentelemetry/semantic-conventions');
const { OpenFeature, TypedInMemoryProvider } = require('@openfeature/server-sdk');
const { SpanHook, EventHook, MetricsHook } = require('@openfeature/open-telemetry-hooks');

const FLAG = 'new-checkout';
const ROUTE = '/checkout';
const EXPORT_TIMEOUT_MS = 10000;
const PROTOCOLS = ['http/protobuf', 'http/json', 'grpc'];
// The exporter packages of each protocol, by signal.
const PACKAGES = {
  'http/protobuf': ['trace-otlp-proto', 'logs-otlp-proto', 'metrics-otlp-proto'],
  'http/json': ['trace-otlp-http', 'logs-otlp-http', 'metrics-otlp-http'],
  grpc: ['trace-otlp-grpc', 'logs-otlp-grpc', 'metrics-otlp-grpc'],
};

function options() {
  const { values } = parseArgs({
    options: {
      protocol: { type: 'string', default: 'http/protobuf' },
      http: { type: 'string', default: 'http://127.0.0.1:4318' },
      grpc: { type: 'string', default: '127.0.0.1:4317' },
      token: { type: 'string', default: '' },
      service: { type: 'string', default: 'node-checkout' },
      requests: { type: 'string', default: '60' },
      users: { type: 'string', default: '10' },
      'test-every': { type: 'string', default: '5' },
      background: { type: 'string', default: '3' },
      concurrency: { type: 'string', default: '8' },
      compression: { type: 'string', default: 'none' },
      'payload-bytes': { type: 'string', default: '0' },
    },
  });
  if (!PROTOCOLS.includes(values.protocol)) {
    throw new Error(`--protocol must be one of ${PROTOCOLS.join(', ')}, not ${values.protocol}`);
  }
  if (!['gzip', 'none'].includes(values.compression)) {
    throw new Error(`--compression must be gzip or none, not ${values.compression}`);
  }
  const number = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be an integer ≥ 0`);
    return n;
  };
  return {
    protocol: values.protocol,
    http: values.http.replace(/\/+$/, ''),
    grpc: values.grpc,
    token: values.token,
    service: values.service,
    requests: number('requests'),
    users: Math.max(1, number('users')),
    testEvery: number('test-every'),
    background: number('background'),
    concurrency: Math.max(1, number('concurrency')),
    compression: values.compression,
    payloadBytes: number('payload-bytes'),
  };
}

// -- what the run saw ----------------------------------------------------------------------
const report = {
  exported: { spans: [], logs: [], metrics: [] },
  failures: [],
  diag: [],
  ended: { spans: 0, logs: 0 },
  unanswered_exports: 0,
  variants: {},
  requests: [],
  background: [],
};

function remember(level, args) {
  const text = args.map((a) => (a instanceof Error ? `${a.name}: ${a.message}` : String(a)));
  report.diag.push({ level, message: text.join(' ') });
  process.stderr.write(`[otel ${level}] ${text.join(' ')}\n`);
}

function errorInfo(error) {
  if (!error) return { message: 'export failed without an error' };
  const data = error.data === undefined ? undefined : String(error.data).slice(0, 500);
  return { name: error.name, message: String(error.message), code: error.code, data };
}

// Exports not answered yet: a processor's shutdown stops waiting at its first failed batch.
const inFlight = new Set();

/** `exporter` whose results are recorded: what it delivered, and every failure. */
function recorded(signal, exporter, describe) {
  const send = exporter.export.bind(exporter);
  exporter.export = (items, done) => {
    let answered;
    const answer = new Promise((resolve) => {
      answered = resolve;
    });
    inFlight.add(answer);
    send(items, (result) => {
      inFlight.delete(answer);
      answered();
      if (result.code === ExportResultCode.SUCCESS) {
        report.exported[signal].push(...describe(items));
      } else {
        const count = Array.isArray(items) ? items.length : describe(items).length;
        report.failures.push({ signal, items: count, ...errorInfo(result.error) });
      }
      done(result);
    });
  };
  return exporter;
}

// -- descriptions of what was exported -------------------------------------------------------
const nanos = (hrTime) => (BigInt(hrTime[0]) * 1000000000n + BigInt(hrTime[1])).toString();

function withoutPayload(attributes) {
  const { 'app.payload': _payload, ...rest } = attributes;
  return rest;
}

function describeSpans(spans) {
  return spans.map((span) => ({
    trace_id: span.spanContext().traceId,
    span_id: span.spanContext().spanId,
    parent_span_id: span.parentSpanContext?.spanId ?? null,
    name: span.name,
    otlp_kind: span.kind + 1, // the API's SpanKind starts at INTERNAL = 0, OTLP's at 1
    status_code: span.status.code,
    attributes: withoutPayload(span.attributes),
  }));
}

function describeLogs(records) {
  return records.map((record) => ({
    trace_id: record.spanContext?.traceId ?? null,
    span_id: record.spanContext?.spanId ?? null,
    event_name: record.eventName ?? null,
    severity_number: record.severityNumber ?? null,
    body: record.body ?? null,
    attributes: record.attributes,
  }));
}

function pointValue(type, point) {
  if (type === DataPointType.HISTOGRAM) {
    const { count, sum, min, max } = point.value;
    return { count, sum, min: min ?? null, max: max ?? null };
  }
  return point.value;
}

function describeMetrics(resourceMetrics) {
  const points = [];
  for (const scope of resourceMetrics.scopeMetrics) {
    for (const metric of scope.metrics) {
      for (const point of metric.dataPoints) {
        points.push({
          scope: scope.scope.name,
          name: metric.descriptor.name,
          type: DataPointType[metric.dataPointType],
          time_unix_nano: nanos(point.endTime),
          start_time_unix_nano: nanos(point.startTime),
          attributes: point.attributes,
          value: pointValue(metric.dataPointType, point),
        });
      }
    }
  }
  return points;
}

// -- the SDK ---------------------------------------------------------------------------------
function exporters(opts) {
  const [traces, logs, metrics] = PACKAGES[opts.protocol].map((name) =>
    require(`@opentelemetry/exporter-${name}`),
  );
  const common = { timeoutMillis: EXPORT_TIMEOUT_MS, compression: opts.compression };
  let config;
  if (opts.protocol === 'grpc') {
    const metadata = new grpc.Metadata();
    if (opts.token) metadata.set('authorization', `Bearer ${opts.token}`);
    const credentials = grpc.credentials.createInsecure();
    config = () => ({ ...common, url: `http://${opts.grpc}`, credentials, metadata });
  } else {
    const headers = opts.token ? { Authorization: `Bearer ${opts.token}` } : {};
    config = (path) => ({ ...common, url: `${opts.http}${path}`, headers });
  }
  return {
    traces: recorded('spans', new traces.OTLPTraceExporter(config('/v1/traces')), describeSpans),
    logs: recorded('logs', new logs.OTLPLogExporter(config('/v1/logs')), describeLogs),
    metrics: recorded(
      'metrics',
      new metrics.OTLPMetricExporter(config('/v1/metrics')),
      describeMetrics,
    ),
  };
}

function startSdk(opts) {
  api.diag.setLogger(
    {
      error: (...a) => remember('error', a),
      warn: (...a) => remember('warn', a),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    api.DiagLogLevel.WARN,
  );
  setGlobalErrorHandler((error) => remember('global-error', [error]));
  const resource = resourceFromAttributes({
    [semconv.ATTR_SERVICE_NAME]: opts.service,
    [semconv.ATTR_SERVICE_VERSION]: '1.4.2',
    'deployment.environment.name': 'test',
  });
  const out = exporters(opts);
  const counting = {
    onStart() {},
    onEnd() {
      report.ended.spans += 1;
    },
    onEmit() {
      report.ended.logs += 1;
    },
    forceFlush: async () => {},
    shutdown: async () => {},
  };
  const tracerProvider = new NodeTracerProvider({
    resource,
    spanProcessors: [counting, new BatchSpanProcessor(out.traces)], // (exporter, config)
  });
  tracerProvider.register(); // the AsyncLocalStorage context manager: the hook sees the request
  const loggerProvider = new LoggerProvider({
    resource,
    processors: [counting, new BatchLogRecordProcessor({ exporter: out.logs })],
  });
  apiLogs.logs.setGlobalLoggerProvider(loggerProvider);
  const meterProvider = new MeterProvider({
    resource,
    readers: [
      new PeriodicExportingMetricReader({
        exporter: out.metrics,
        exportIntervalMillis: 60000, // the run flushes on purpose: twice, and at shutdown
        exportTimeoutMillis: EXPORT_TIMEOUT_MS,
      }),
    ],
  });
  api.metrics.setGlobalMeterProvider(meterProvider);
  return { tracerProvider, loggerProvider, meterProvider };
}

// -- the application -------------------------------------------------------------------------
/** A stable 50/50 split by user, as a flag service's percentage rollout would make it. */
function bucket(user) {
  return crypto.createHash('sha256').update(`${FLAG}/${user}`).digest()[0] % 2 ? 'on' : 'off';
}

async function startFlags() {
  const provider = new TypedInMemoryProvider({
    [FLAG]: {
      variants: { on: true, off: false },
      defaultVariant: 'off',
      disabled: false,
      contextEvaluator: (context) => bucket(context.targetingKey),
    },
  });
  await OpenFeature.setProviderAndWait(provider);
  OpenFeature.addHooks(new SpanHook(), new EventHook(), new MetricsHook());
  return OpenFeature.getClient('checkout');
}

function instruments() {
  const meter = api.metrics.getMeter('checkout', '1.4.2');
  return {
    requests: meter.createCounter('checkout.requests', {
      unit: '{request}',
      valueType: api.ValueType.INT,
    }),
    duration: meter.createHistogram('checkout.duration', { unit: 'ms' }),
    active: meter.createUpDownCounter('checkout.active', { valueType: api.ValueType.INT }),
    cart: meter.createGauge('checkout.cart_items', { unit: '{item}' }),
  };
}

function makeApp(opts, flags, meters) {
  const tracer = api.trace.getTracer('checkout', '1.4.2');
  const logger = apiLogs.logs.getLogger('checkout', '1.4.2');
  const users = [
    ...Array.from({ length: opts.users }, (_, i) => `user-${i}`),
    'qa-0', // test users: flagscope's default test_user_patterns has qa-*
    'qa-1',
  ];
  const payload = opts.payloadBytes
    ? () => crypto.randomBytes(Math.ceil(opts.payloadBytes / 2)).toString('hex')
    : null;

  return async function handle(i) {
    const user = users[i % users.length];
    const synthetic = opts.testEvery > 0 && i % opts.testEvery === opts.testEvery - 1;
    const status = i % 9 === 8 ? 500 : 200;
    const marker = synthetic ? { 'user_agent.synthetic.type': 'test' } : {};
    const attributes = {
      [semconv.ATTR_HTTP_REQUEST_METHOD]: 'POST',
      [semconv.ATTR_HTTP_ROUTE]: ROUTE,
      [semconv.ATTR_URL_PATH]: `${ROUTE}/${i}`,
      'enduser.id': user,
      'request.id': String(i),
      ...marker,
      ...(payload ? { 'app.payload': payload() } : {}),
    };
    const options = { kind: api.SpanKind.SERVER, attributes };
    await tracer.startActiveSpan(`POST ${ROUTE}`, options, async (span) => {
      const started = performance.now();
      meters.active.add(1, { [semconv.ATTR_HTTP_ROUTE]: ROUTE });
      try {
        const details = await flags.getBooleanDetails(FLAG, false, { targetingKey: user });
        await sleep(i % 3);
        span.setAttribute(semconv.ATTR_HTTP_RESPONSE_STATUS_CODE, status);
        const failed = status >= 500;
        if (failed) span.setStatus({ code: api.SpanStatusCode.ERROR });
        logger.emit({
          severityNumber: failed ? apiLogs.SeverityNumber.ERROR : apiLogs.SeverityNumber.INFO,
          severityText: failed ? 'ERROR' : 'INFO',
          body: `checkout ${details.value ? 'new' : 'old'} flow answered ${status}`,
          attributes: {
            'user.id': user,
            'request.id': String(i),
            [semconv.ATTR_HTTP_ROUTE]: ROUTE,
            ...marker,
          },
        });
        const flagged = {
          'feature_flag.key': FLAG,
          'feature_flag.result.variant': details.variant,
          [semconv.ATTR_HTTP_ROUTE]: ROUTE,
        };
        meters.requests.add(1, { ...flagged, [semconv.ATTR_HTTP_RESPONSE_STATUS_CODE]: status });
        meters.duration.record(performance.now() - started, flagged);
        meters.cart.record(1 + (i % 5), flagged);
        const { variant } = details;
        report.variants[user] = variant;
        const { traceId, spanId } = span.spanContext();
        const request = { trace_id: traceId, span_id: spanId, user, variant, synthetic, status };
        report.requests.push(request);
      } finally {
        meters.active.add(-1, { [semconv.ATTR_HTTP_ROUTE]: ROUTE });
        span.end();
      }
    });
  };
}

async function serve(handle, from, to, concurrency) {
  for (let start = from; start < to; start += concurrency) {
    const wave = [];
    for (let i = start; i < Math.min(to, start + concurrency); i += 1) wave.push(handle(i));
    await Promise.all(wave);
  }
}

async function main() {
  const opts = options();
  const sdk = startSdk(opts);
  const flags = await startFlags();
  const handle = makeApp(opts, flags, instruments());
  const half = Math.floor(opts.requests / 2);
  await serve(handle, 0, half, opts.concurrency);
  await sdk.meterProvider.forceFlush(); // a first cumulative export mid-run
  await serve(handle, half, opts.requests, opts.concurrency);
  for (let b = 0; b < opts.background; b += 1) {
    const user = `worker-${b}`; // outside any span: the SpanHook starts a root span
    const details = await flags.getBooleanDetails(FLAG, false, { targetingKey: user });
    report.background.push({ user, variant: details.variant });
  }
  await sdk.meterProvider.forceFlush();
  await OpenFeature.close();
  for (const provider of [sdk.tracerProvider, sdk.loggerProvider, sdk.meterProvider]) {
    try {
      await provider.shutdown(); // flushes what is queued
    } catch (error) {
      remember('shutdown', [error]);
    }
  }
  const deadline = sleep(EXPORT_TIMEOUT_MS + 5000, 'deadline', { ref: false });
  await Promise.race([Promise.all(inFlight), deadline]);
  report.unanswered_exports = inFlight.size;
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(2);
});
