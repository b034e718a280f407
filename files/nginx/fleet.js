// managed by vllm-fleet: shipped as is next to nginx.conf (njs >= 0.8).
//
// One OpenAI base URL for the whole fleet: each request under /v1/ is routed by the `model` its
// body names. The table comes from models.json (rendered from the stack config and preloaded by
// nginx.conf as `fleet_models`, shared read-only by all requests): `routes` maps every name a
// client may send (a model's served name, a LoRA adapter's name) to its upstream, `models` is the
// list GET /v1/models answers. This file never changes with the config, so a config change
// touches only models.json and nginx.conf.
//
// The pinned image ships njs 0.8.10 (nginx:1.28.0-alpine); the tests run Debian 13's 0.8.9. njs
// starts a fresh VM per request: nothing here keeps state between requests.
//
// Keys, two modes. Without `load_balancer.keys` (keys.json `enabled: false`) the replicas check
// the client's key (vLLM's --api-key): a request routed to a replica is checked there, and
// anything Nginx answers itself (the model list, an error that names models) first asks a replica
// whether the key is good (`refusal`). With client keys, this module checks them itself: the
// SHA-256 of the bearer token against keys.json (only hashes live there), then the models that
// key may use, before any redirect; it names the key in $fleet_key for the access log and the
// per-key limits (limit_req/limit_conn in nginx.conf); Nginx then sends the fleet's own key.

var crypto = require('crypto');
var ERROR_TYPE = 'invalid_request_error';

function fail(r, status, message, param, code) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({error: {message: message, type: ERROR_TYPE, param: param, code: code}}));
}

function names() {
    return Object.keys(fleet_models.routes);
}

function own(table, name) {
    // Preloaded objects have no prototype: an own property is the only kind a name can match.
    return Object.prototype.hasOwnProperty.call(table, name);
}

// The client key's entry in keys.json ({name, models}), or null for a missing or unknown key.
function clientKey(r) {
    var auth = r.headersIn['Authorization'] || '';
    var match = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!match) {
        return null;
    }
    var hash = crypto.createHash('sha256').update(match[1]).digest('hex');
    return own(fleet_keys.keys, hash) ? fleet_keys.keys[hash] : null;
}

function mayUse(key, name) {
    if (key.models === null) {
        return true;
    }
    // Preloaded arrays have no prototype either (no indexOf): a plain loop.
    for (var i = 0; i < key.models.length; i++) {
        if (key.models[i] === name) {
            return true;
        }
    }
    return false;
}

function unauthorized(r) {
    r.headersOut['WWW-Authenticate'] = 'Bearer';
    fail(r, 401, 'Incorrect API key provided.', null, 'invalid_api_key');
}

// With client keys: the accepted key (named in $fleet_key), or null after a 401 was answered.
// Without: undefined, the replicas decide.
function checkedKey(r) {
    if (!fleet_keys.enabled) {
        return undefined;
    }
    var key = clientKey(r);
    if (key === null) {
        unauthorized(r);
        return null;
    }
    r.variables.fleet_key = key.name;
    return key;
}

// The Authorization Nginx sends to the replicas when it checks client keys itself.
function upstreamAuth(r) {
    var key = process.env.FLEET_UPSTREAM_KEY;
    return key ? 'Bearer ' + key : '';
}

// Each upstream once, the first model's first.
function upstreams() {
    var seen = [];
    var all = names();
    for (var i = 0; i < all.length; i++) {
        var up = fleet_models.routes[all[i]];
        if (seen.indexOf(up) < 0) {
            seen.push(up);
        }
    }
    return seen;
}

// null when the client's key opens /v1/models on a replica (the first upstream that answers
// below 500), else that replica's answer (401 for a missing or wrong key; 502 when none is up).
async function refusal(r) {
    var ups = upstreams();
    var reply;
    for (var i = 0; i < ups.length; i++) {
        reply = await r.subrequest('/_fleet/auth/' + ups[i], {method: 'GET'});
        if (reply.status < 500) {
            break;
        }
    }
    return reply.status === 200 ? null : reply;
}

function passOn(r, reply) {
    r.headersOut['Content-Type'] = reply.headersOut['Content-Type'] || 'application/json';
    r.return(reply.status, reply.responseText || '');
}

// An error Nginx answers itself, once the key is known good (it may name the fleet's models).
async function refuse(r, status, message, param, code) {
    if (fleet_keys.enabled) {
        // route() checked the key before reading the body.
        fail(r, status, message, param, code);
        return;
    }
    var denied = await refusal(r);
    if (denied) {
        passOn(r, denied);
        return;
    }
    fail(r, status, message, param, code);
}

// The names a key may send (all of them without client keys).
function visible(key) {
    return names().filter(function (n) { return !key || mayUse(key, n); });
}

function available(key) {
    return 'Available models: ' + visible(key).join(', ') + '.';
}

function hasRoute(name) {
    return own(fleet_models.routes, name);
}

function isMultipart(r) {
    return (r.headersIn['Content-Type'] || '').toLowerCase().indexOf('multipart/form-data') === 0;
}

// The `model` field of a multipart/form-data body (the audio endpoints), or undefined.
function multipartModel(r) {
    // Only a multipart body is read as one: an empty body's buffer is detached in njs 0.8.
    var body = isMultipart(r) ? r.requestBuffer : null;
    if (!body) {
        return undefined;
    }
    var field = body.indexOf('name="model"');
    if (field < 0) {
        return undefined;
    }
    var start = body.indexOf('\r\n\r\n', field);
    var end = start < 0 ? -1 : body.indexOf('\r\n', start + 4);
    return end < 0 ? undefined : body.slice(start + 4, end).toString();
}

// A request body read as a JSON object: {body} (undefined when there is no text), or {error}
// saying, in OpenAI's words, why it is not one.
function parseObject(text) {
    if (!text) {
        return {body: undefined};
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        return {error: 'We could not parse the JSON body of your request: ' + e.message};
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        return {error: 'The request body must be a JSON object.'};
    }
    return {body: body};
}

// The request's JSON body: an object, undefined when there is none (GET, DELETE, an empty POST, a
// multipart upload), or null after an error was answered.
function jsonBody(r) {
    if (isMultipart(r)) {
        return undefined;
    }
    var parsed = parseObject(r.requestText);
    if (parsed.error) {
        refuse(r, 400, parsed.error, null, null);
        return null;
    }
    return parsed.body;
}

// The name the client asked for (`body`: jsonBody's answer): a string, undefined when the request
// names none, or null after an error was answered.
function requestedModel(r, body) {
    if (body === undefined) {
        return multipartModel(r);
    }
    if (body.model === undefined || body.model === null) {
        return undefined;
    }
    if (typeof body.model !== 'string') {
        refuse(r, 400, '`model` must be a string. ' + available(), 'model', null);
        return null;
    }
    return body.model;
}

// --- prefix affinity ---------------------------------------------------------------------------
// `prefix_affinity` keeps a conversation on the replica that holds its prefix in vLLM's cache.
// The route key names the conversation, not just the start every request shares: the session
// header when the client sends one; for chat (`messages`, the Responses API's `input` list) the
// instructions and system messages with the first user message, which every later turn repeats
// unchanged (a shared system prompt alone would send every conversation to one replica); for a
// text prompt its first PREFIX_CHARS characters (PREFIX_TOKENS ids for a token prompt). A request
// with none of these (an upload) gets its own request id: spread like round robin.
//
// Placement is bounded-load consistent hashing (Mirrokni, Thorup and Zadimoghaddam, 2016): the
// key ranks the model's replicas (rendezvous hashing: a replica's arrival or departure moves only
// the conversations it takes or held), and the request goes to the first one in that order with
// fewer than load_factor x the mean requests in flight (+1; min_bound at least). A hot conversation so spills to its
// next replica as soon as it loads its own beyond its share, and back when the load drops; the
// bound follows the fleet's load, whatever it is. The counts live in a shared dictionary
// (nginx.conf's js_shared_dict_zone), which every worker updates: a request counts from its
// placement until it is logged (`placed`).
var PREFIX_CHARS = 2048;
var PREFIX_TOKENS = 512;

function text(value) {
    return typeof value === 'string' ? value : JSON.stringify(value === undefined ? null : value);
}

// The part of a message list that stays the same for the whole conversation, or undefined.
function conversationStart(messages) {
    var parts = [];
    for (var i = 0; i < messages.length; i++) {
        var m = messages[i];
        if (m === null || typeof m !== 'object') {
            return undefined;
        }
        parts.push(text(m.role), text(m.content));
        if (m.role === 'user') {
            return parts.join('\u0000');
        }
    }
    return parts.length ? parts.join('\u0000') : undefined;
}

function promptStart(prompt) {
    if (typeof prompt === 'string') {
        return prompt.slice(0, PREFIX_CHARS);
    }
    if (Array.isArray(prompt) && prompt.length) {
        if (typeof prompt[0] === 'number') {
            return JSON.stringify(prompt.slice(0, PREFIX_TOKENS));
        }
        return promptStart(prompt[0]);  // a batch of prompts: the first one's replica
    }
    return undefined;
}

function routeMaterial(r, body) {
    var session = r.headersIn[fleet_models.routing.session_header];
    if (session) {
        return 'session\u0000' + session;
    }
    if (!body) {
        return undefined;
    }
    if (Array.isArray(body.messages)) {
        return conversationStart(body.messages);
    }
    var start = Array.isArray(body.input) ? conversationStart(body.input) : promptStart(body.input);
    if (start !== undefined && body.instructions) {
        start = text(body.instructions) + '\u0000' + start;
    }
    return start !== undefined ? start : promptStart(body.prompt);
}

// A replica's rank score for a route key: FNV-1a over both, then MurmurHash3's finalizer, so
// that keys differing in one character rank the replicas independently.
function score(key, replica) {
    var s = key + '\u0000' + replica;
    var h = 0x811c9dc5;
    for (var i = 0; i < s.length; i++) {
        h = Math.imul(h ^ s.charCodeAt(i), 16777619);
    }
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    return (h ^ (h >>> 16)) >>> 0;
}

// The replicas of `upstream` in the order `key` prefers them.
function ranked(key, replicas) {
    var order = [];
    for (var i = 0; i < replicas.length; i++) {
        order.push({name: replicas[i], score: score(key, replicas[i])});
    }
    order.sort(function (a, b) { return b.score - a.score || (a.name < b.name ? -1 : 1); });
    return order.map(function (o) { return o.name; });
}

// A replica whose first attempt failed is passed over for fail_timeout_s (as Nginx benches it),
// so that its conversations all go to their next replica meanwhile, not to any backup Nginx's
// round robin picks (and a replica Kubernetes has not started yet never draws them).
function downKey(replica) {
    return 'down ' + replica;
}

function isDown(load, replica, now) {
    return (load.get(downKey(replica)) || 0) > now;
}

// Places the request on the first replica of its conversation's order that is up and below the
// bound, and counts it there: $fleet_replica (the upstream @fleet_upstream proxies to), $fleet_rank.
function place(r, key) {
    var replicas = fleet_models.routing.replicas[r.variables.fleet_upstream];
    var load = ngx.shared.fleet_in_flight;
    var now = Date.now();
    var all = ranked(key, replicas);
    var order = all.filter(function (name) { return !isDown(load, name, now); });
    if (order.length === 0) {
        order = all;  // all benched: Nginx's own failover decides
    }
    var counts = [];
    var total = 0;
    for (var i = 0; i < order.length; i++) {
        counts.push(Math.max(0, load.get(order[i]) || 0));
        total += counts[i];
    }
    // min_bound: a replica running fewer passes no conversation on (models.json; see files.py).
    var bound = Math.max(fleet_models.routing.min_bound, Math.ceil(fleet_models.routing.load_factor * (total + 1) / order.length));
    var rank = 0;
    // Some replica is below: they cannot all hold more than the mean (the guard is for rounding).
    while (counts[rank] >= bound && rank < order.length - 1) {
        rank++;
    }
    load.incr(order[rank], 1, 0);
    r.variables.fleet_replica = order[rank];
    r.variables.fleet_rank = String(all.indexOf(order[rank]));
}

// Did the replica's own server fail the request's first attempt? ($upstream_addr names a server,
// not the upstream as after "no live upstreams", and its first status is an error Nginx retries.)
function firstAttemptFailed(r) {
    var addr = (r.variables.upstream_addr || '').split(/[,:] /)[0];
    var status = parseInt((r.variables.upstream_status || '').split(/[,:] /)[0], 10);
    return addr.indexOf(':') > 0 && status >= 500;
}

// $fleet_placed, read once when the request is logged: the rank it was placed at ('-': not
// placed), and the request no longer counts on its replica.
function placed(r) {
    var replica = r.variables.fleet_replica;
    if (!replica) {
        return '-';
    }
    r.variables.fleet_replica = '';
    var load = ngx.shared.fleet_in_flight;
    if (load.incr(replica, -1, 0) < 0) {
        load.set(replica, 0);  // a count from before a restart of the zone
    }
    if (firstAttemptFailed(r)) {
        load.set(downKey(replica), Date.now() + 1000 * fleet_models.routing.fail_timeout_s);
    }
    return r.variables.fleet_rank;
}

// Under prefix_affinity: names the conversation in $fleet_route_key (what the access log shows:
// a digest, never the text) and places the request on one of its model's replicas.
function placeConversation(r, body) {
    if (fleet_models.routing.policy !== 'prefix_affinity') {
        return;
    }
    var material = routeMaterial(r, body);
    var key = material === undefined ? r.variables.request_id
        : crypto.createHash('sha1').update(material).digest('hex').slice(0, 16);
    r.variables.fleet_route_key = key;
    place(r, key);
}

// js_content of /v1/: pick the upstream by the body's model, then hand the request (its body
// already in memory) to @fleet_upstream, which proxies with the server's settings.
function route(r) {
    var key = checkedKey(r);
    if (key === null) {
        return;
    }
    var body = jsonBody(r);
    if (body === null) {
        return;
    }
    var name = requestedModel(r, body);
    if (name === null) {
        return;
    }
    if (name === undefined) {
        if (upstreams().length !== 1) {
            refuse(r, 400, 'You must provide a model parameter. ' + available(key), 'model', null);
            return;
        }
        name = names()[0];  // one model: a request without `model` reaches it, as vLLM itself allows
    }
    // A model the key may not use is answered as one that does not exist, as OpenAI does.
    if (!hasRoute(name) || (key && !mayUse(key, name))) {
        refuse(r, 404, 'The model `' + name + '` does not exist or you do not have access to it. ' + available(key),
               'model', 'model_not_found');
        return;
    }
    r.variables.fleet_model = name;
    r.variables.fleet_upstream = fleet_models.routes[name];
    placeConversation(r, body);
    r.internalRedirect('@fleet_upstream');
}

// js_content of GET /v1/models: the fleet's models and adapters from the config, in OpenAI's list
// shape (see nginx_models in fleet/render/files.py for why not the replicas' own lists).
async function models(r) {
    var key = checkedKey(r);
    if (key === null) {
        return;
    }
    var denied = key === undefined ? await refusal(r) : null;
    if (denied) {
        passOn(r, denied);
        return;
    }
    if (r.method !== 'GET' && r.method !== 'HEAD') {
        r.headersOut['Allow'] = 'GET, HEAD';
        fail(r, 405, 'Method Not Allowed', null, null);
        return;
    }
    var created = Math.floor(Date.now() / 1000);
    var cards = fleet_models.models;
    var data = [];
    for (var i = 0; i < cards.length; i++) {
        if (key && !mayUse(key, cards[i].id)) {
            continue;
        }
        var card = JSON.parse(JSON.stringify(cards[i]));  // a mutable copy of the preloaded card
        card.created = created;
        data.push(card);
    }
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify({object: 'list', data: data}));
}

// js_content of /models/<name>/v1/ with client keys or prefix affinity ($fleet_prefix: that model's
// upstream): the key must be allowed a name routed there, and the body's `model`, when it names
// one, itself.
function prefixed(r) {
    var key = checkedKey(r);
    if (key === null) {
        return;
    }
    var upstream = r.variables.fleet_prefix;
    if (key === undefined) {
        // No client keys (here only for prefix affinity): the replica checks the request itself,
        // as before; Nginx only names the conversation.
        var loose = parseObject(r.requestText).body;  // what is not a JSON object names no conversation
        r.variables.fleet_model = loose && typeof loose.model === 'string' ? loose.model : '';
        r.variables.fleet_upstream = upstream;
        placeConversation(r, loose);
        r.internalRedirect('@fleet_prefixed');
        return;
    }
    var mine = visible(key).filter(function (n) { return fleet_models.routes[n] === upstream; });
    var body = jsonBody(r);
    if (body === null) {
        return;
    }
    var name = requestedModel(r, body);
    if (name === null) {
        return;
    }
    if (mine.length === 0 || (name !== undefined && mine.indexOf(name) < 0)) {
        fail(r, 404, 'The model `' + (name || upstream) + '` does not exist or you do not have access to it.',
             'model', 'model_not_found');
        return;
    }
    r.variables.fleet_model = name || mine[0];
    r.variables.fleet_upstream = upstream;
    placeConversation(r, body);
    r.internalRedirect('@fleet_prefixed');
}

export default {route, models, prefixed, placed, upstreamAuth};
