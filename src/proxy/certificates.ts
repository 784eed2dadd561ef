import 'reflect-metadata' // @peculiar/x509 needs it loaded first (reference dependency-facts §6)
import * as x509 from '@peculiar/x509'
import { webcrypto, randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile, chmod } from 'node:fs/promises'
import { join } from 'node:path'
import tls from 'node:tls'
import { InvalidArgumentError, type Logger } from '../core/index.js'

// Certificates for the tls and pg_tls handlers (issue 3): a Hangar CA kept in `caDir` issues a
// certificate for `<app>.<domain>` (and any custom hostname) the first time a client asks for it
// by SNI. A certificate an operator placed in `<caDir>/certs/<hostname>.{crt,key}` wins over an
// issued one. Issued certificates are cached in memory and on disk.

x509.cryptoProvider.set(webcrypto as unknown as never)

export const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const
export const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const
const HOSTNAME = /^(?=.{1,253}$)(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/

export function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n')
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`
}

/** A new self-signed CA (ECDSA P-256, ten years): the proxy's CA and the cluster's backhaul CA. */
export async function generateCaCertificate(commonName: string): Promise<{ certPem: string; keyPem: string }> {
  const keys = await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']) as unknown as webcrypto.CryptoKeyPair
  const now = Date.now()
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(8).toString('hex'),
    name: `CN=${commonName}`,
    notBefore: new Date(now - 3_600_000),
    notAfter: new Date(now + 10 * 365 * 86_400_000),
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  })
  return { certPem: cert.toString('pem') + '\n', keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as unknown as webcrypto.CryptoKey)) }
}

export async function importPrivateKey(keyPem: string): Promise<webcrypto.CryptoKey> {
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64')
  return await webcrypto.subtle.importKey('pkcs8', der, KEY_ALGORITHM, true, ['sign']) as unknown as webcrypto.CryptoKey
}

export class CertificateStore {
  readonly caCertPem: string
  private readonly caCert: x509.X509Certificate
  private readonly caKey: webcrypto.CryptoKey
  private readonly dir: string
  private readonly logger: Logger
  private readonly contexts = new Map<string, Promise<tls.SecureContext>>()
  private readonly pems = new Map<string, Promise<{ cert: string; key: string }>>()

  private constructor(dir: string, caCertPem: string, caCert: x509.X509Certificate, caKey: webcrypto.CryptoKey, logger: Logger) {
    this.dir = dir
    this.caCertPem = caCertPem
    this.caCert = caCert
    this.caKey = caKey
    this.logger = logger
  }

  /** Loads the CA from `dir` (ca.crt, ca.key), creating it on first use. */
  static async open(dir: string, logger: Logger): Promise<CertificateStore> {
    await mkdir(join(dir, 'certs'), { recursive: true })
    const certPath = join(dir, 'ca.crt')
    const keyPath = join(dir, 'ca.key')
    let certPem: string
    let keyPem: string
    try {
      certPem = await readFile(certPath, 'utf8')
      keyPem = await readFile(keyPath, 'utf8')
    } catch {
      ;({ certPem, keyPem } = await generateCaCertificate('Hangar proxy CA'))
      await writeFile(keyPath, keyPem, { mode: 0o600 })
      await writeFile(certPath, certPem)
      await chmod(keyPath, 0o600)
      logger.info('created the Hangar proxy CA', { path: certPath })
    }
    const caCert = new x509.X509Certificate(certPem)
    return new CertificateStore(dir, certPem, caCert, await importPrivateKey(keyPem), logger)
  }

  /** A secure context for `hostname`: the operator's certificate, or one the CA issues. */
  contextFor(hostname: string, options: { minVersion?: tls.SecureVersion; maxVersion?: tls.SecureVersion } = {}): Promise<tls.SecureContext> {
    const name = hostname.toLowerCase()
    if (!HOSTNAME.test(name)) return Promise.reject(new InvalidArgumentError(`${JSON.stringify(hostname)} is not a hostname a certificate can be issued for`))
    const cacheKey = `${name}|${options.minVersion ?? ''}|${options.maxVersion ?? ''}`
    let context = this.contexts.get(cacheKey)
    if (context === undefined) {
      context = this.pemFor(name).then(({ cert, key }) => tls.createSecureContext({ cert, key, minVersion: options.minVersion ?? 'TLSv1.2', maxVersion: options.maxVersion ?? 'TLSv1.3' }))
      context.catch(() => this.contexts.delete(cacheKey))
      this.contexts.set(cacheKey, context)
    }
    return context
  }

  /** The certificate chain and key (PEM) for `hostname`, loaded or issued once. */
  pemFor(hostname: string): Promise<{ cert: string; key: string }> {
    const name = hostname.toLowerCase()
    if (!HOSTNAME.test(name)) return Promise.reject(new InvalidArgumentError(`${JSON.stringify(hostname)} is not a hostname a certificate can be issued for`))
    let pem = this.pems.get(name)
    if (pem === undefined) {
      pem = this.load(name)
      pem.catch(() => this.pems.delete(name))
      this.pems.set(name, pem)
    }
    return pem
  }

  private async load(hostname: string): Promise<{ cert: string; key: string }> {
    const safe = hostname.replace(/\*/g, '_wildcard_')
    for (const [certFile, keyFile] of [[`${safe}.crt`, `${safe}.key`], [`${safe}.issued.crt`, `${safe}.issued.key`]] as const) {
      try {
        const cert = await readFile(join(this.dir, 'certs', certFile), 'utf8')
        const key = await readFile(join(this.dir, 'certs', keyFile), 'utf8')
        if (certFile.endsWith('.issued.crt') && new x509.X509Certificate(cert).notAfter.getTime() < Date.now() + 86_400_000) break
        return { cert, key }
      } catch { /* not there: try the next, then issue */ }
    }
    const issued = await this.issue(hostname)
    await writeFile(join(this.dir, 'certs', `${safe}.issued.key`), issued.key, { mode: 0o600 })
    await writeFile(join(this.dir, 'certs', `${safe}.issued.crt`), issued.cert)
    return issued
  }

  /** Issues a leaf certificate for `hostname`, valid for 90 days, chained to the CA. */
  async issue(hostname: string): Promise<{ cert: string; key: string }> {
    const keys = await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']) as unknown as webcrypto.CryptoKeyPair
    const now = Date.now()
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomBytes(8).toString('hex'),
      subject: `CN=${hostname}`,
      issuer: this.caCert.subject,
      notBefore: new Date(now - 3_600_000),
      notAfter: new Date(now + 90 * 86_400_000),
      signingKey: this.caKey,
      publicKey: keys.publicKey,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: hostname }], false),
      ],
    })
    this.logger.info('issued a certificate', { hostname })
    const key = pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as unknown as webcrypto.CryptoKey))
    return { cert: cert.toString('pem') + '\n' + this.caCertPem, key }
  }
}
