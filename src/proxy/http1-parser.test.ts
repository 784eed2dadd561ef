import { test } from 'node:test'
import assert from 'node:assert/strict'
import { BodyFramer, composeHead, dechunk, keptHeaderLines, HttpParseError, parseRequestHead, parseResponseHead, responseHasNoBody } from './http1-parser.js'

test('request head: framing, Host, Connection, Upgrade and the Fly client headers', () => {
  const head = parseRequestHead([
    'POST /x?y=1 HTTP/1.1', 'Host: app.example', 'Content-Length: 5', 'Connection: keep-alive', 'Keep-Alive: timeout=5',
    'X-Forwarded-For: 1.2.3.4', 'Fly-Client-IP: 6.6.6.6', 'fly-prefer-region: sin,ams', 'Fly-Force-Instance-Id: abc', 'X-Custom: a',
  ].join('\r\n'))
  assert.equal(head.method, 'POST')
  assert.equal(head.target, '/x?y=1')
  assert.equal(head.host, 'app.example')
  assert.equal(head.contentLength, 5)
  assert.equal(head.close, false)
  assert.equal(head.xForwardedFor, '1.2.3.4')
  assert.equal(head.preferRegion, 'sin,ams')
  assert.equal(head.forceInstance, 'abc')
  // Hop-by-hop and proxy-owned headers are not forwarded; others are, verbatim.
  assert.equal(keptHeaderLines(head), 'Host: app.example\r\nContent-Length: 5\r\nX-Custom: a\r\n')
  const bytes = Buffer.from(head.text + '\r\n\r\nBODY', 'latin1')
  assert.equal(composeHead(bytes, head.keep, 'Added: 1\r\n\r\n', Buffer.from('!')).toString('latin1'),
    'POST /x?y=1 HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nX-Custom: a\r\nAdded: 1\r\n\r\n!')
  // Nothing dropped: one range, the whole head.
  const plain = parseRequestHead('GET / HTTP/1.1\r\nHost: a')
  assert.deepEqual(plain.keep, [0, plain.text.length + 2])
})

test('request head: HTTP/1.0 closes by default, keep-alive keeps; Upgrade needs Connection: upgrade', () => {
  assert.equal(parseRequestHead('GET / HTTP/1.0').close, true)
  assert.equal(parseRequestHead('GET / HTTP/1.0\r\nConnection: keep-alive').close, false)
  assert.equal(parseRequestHead('GET / HTTP/1.1\r\nHost: a\r\nConnection: close').close, true)
  assert.equal(parseRequestHead('GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket').upgrade, '')
  assert.equal(parseRequestHead('GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket').upgrade, 'websocket')
})

test('request head: malformed or ambiguous input is refused with the right status', () => {
  const status = (head: string) => { try { parseRequestHead(head); return 0 } catch (err) { assert.ok(err instanceof HttpParseError); return err.status } }
  assert.equal(status('GET /'), 400)
  assert.equal(status('GET / HTTP/2.0\r\nHost: a'), 505)
  assert.equal(status('GET / HTTP/1.1'), 400) // no Host
  assert.equal(status('GET / HTTP/1.1\r\nHost: a\r\nHost: b'), 400)
  assert.equal(status('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked'), 400)
  assert.equal(status('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2'), 400)
  assert.equal(status('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1'), 400)
  assert.equal(status('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip'), 501)
  assert.equal(status('GET / HTTP/1.1\r\nHost: a\r\nBad Name: x'), 400)
  assert.equal(status('GET / HTTP/1.1\r\nHost: a\r\n folded'), 400)
  assert.equal(status('GET / HTTP/1.1\r\nHost: a\nX: b'), 400) // bare LF
  assert.equal(status('GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2'), 0)
  assert.equal(status('get / HTTP/1.1\r\nHost: a'), 400)
})

test('response head: status, framing, Server/Via and fly-replay', () => {
  const res = parseResponseHead('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: x\r\nVia: 1.1 other\r\nFly-Replay: region=sin\r\nConnection: close\r\nContent-Type: text/plain')
  assert.equal(res.status, 200)
  assert.equal(res.reason, 'OK')
  assert.equal(res.contentLength, 3)
  assert.equal(res.hasServer, true)
  assert.equal(res.via, '1.1 other')
  assert.equal(res.flyReplay, 'region=sin')
  assert.equal(res.close, true)
  assert.equal(keptHeaderLines(res), 'Content-Length: 3\r\nServer: x\r\nContent-Type: text/plain\r\n')
  assert.equal(parseResponseHead('HTTP/1.1 204').status, 204)
  assert.throws(() => parseResponseHead('HTTP/2 200 OK'), HttpParseError)
  assert.equal(responseHasNoBody('HEAD', 200), true)
  assert.equal(responseHasNoBody('GET', 304), true)
  assert.equal(responseHasNoBody('GET', 200), false)
})

test('body framer: content-length across chunks', () => {
  const framer = new BodyFramer()
  framer.reset('length', 10)
  assert.equal(framer.consume(Buffer.from('12345'), 0, 5), -1)
  assert.equal(framer.consume(Buffer.from('6789012'), 0, 7), 5)
  assert.equal(framer.done, true)
  framer.reset('length', 0)
  assert.equal(framer.done, true)
})

test('body framer: chunked coding split at every byte boundary, with extensions and trailers', () => {
  const body = Buffer.from('5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT')
  for (let split = 0; split <= body.length; split++) {
    const framer = new BodyFramer()
    framer.reset('chunked')
    const a = body.subarray(0, split)
    const b = body.subarray(split)
    let end = framer.consume(a, 0, a.length)
    if (end === -1) {
      end = framer.consume(b, 0, b.length)
      assert.equal(end, b.length - 4, `split at ${split}`)
    } else {
      assert.equal(end, body.length - 4)
    }
  }
  assert.equal(dechunk(body).toString(), 'hello0123456789')
})

test('body framer: malformed chunked coding throws', () => {
  for (const bad of ['x\r\n', '5\r\nhelloXX', '5\nhello', '1234567890123\r\n']) {
    const framer = new BodyFramer()
    framer.reset('chunked')
    assert.throws(() => framer.consume(Buffer.from(bad), 0, bad.length), HttpParseError, bad)
  }
})
